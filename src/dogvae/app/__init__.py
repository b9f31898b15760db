"""The local web page and JSON API (`dogvae serve RUN`); needs the `web` extra."""

from dogvae.app.server import background_server, create_app, serve

__all__ = ["background_server", "create_app", "serve"]
