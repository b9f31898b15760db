"""`dogvae serve RUN`: the page and the JSON API, a thin FastAPI shell over `ServedRun`.

`create_app` loads the run once and wires the routes (`dogvae.app.api`), the static page, the
upload limit and the error handlers: every error is JSON `{"error": ..., "reason": ...}` with
a 4xx status (503 when breed questions are off, 500 only for the server's own faults).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

import dogvae
from dogvae.app.api import ApiProblem, router
from dogvae.app.service import MAX_UPLOAD_BYTES, ServedRun, StoreUnavailable, UnknownPhoto
from dogvae.app.uploads import UploadLimit
from dogvae.errors import BadImage, DogvaeError
from dogvae.tasks.inputs import UnknownBreed

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

# The page loads nothing from elsewhere; the browser is told so.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
BAD_IMAGE_STATUS = {
    "empty_file": 400,
    "not_an_image": 415,
    "too_many_pixels": 413,
    "truncated": 422,
    "unreadable": 422,
}
HTTP_REASONS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def create_app(
    run: str | Path | ServedRun,
    *,
    data: str | Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    progress: bool = False,
    device: str = "cpu",
) -> FastAPI:
    """The web app for a trained run; the model (on `device`) and latent store load here, once."""
    served = (
        run
        if isinstance(run, ServedRun)
        else ServedRun(run, data, progress=progress, device=device)
    )
    app = FastAPI(
        title="dogvae",
        version=dogvae.__version__,
        summary=f"Ask the latent space of the VAE in {str(served.run)!r} about dogs.",
        description="Upload a photo once (`POST /api/photos`), then ask about it by its `ref`; "
        "every photo endpoint also takes the file itself in `image`. Errors are "
        '`{"error": ..., "reason": ...}` with a 4xx status.',
    )
    app.state.served = served
    app.state.max_upload_bytes = max_upload_bytes
    app.add_middleware(UploadLimit, photo_bytes=max_upload_bytes, photos_for=photos_in)
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    return app


def photos_in(path: str) -> int:
    """How many photos a request to `path` may carry: two for a mix, one elsewhere."""
    return 2 if path == "/api/mix" else 1


# --- errors as JSON -------------------------------------------------------------------------


def problem(status: int, reason: str, error: str, detail=None) -> JSONResponse:
    body = {"error": error, "reason": reason}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def bad_image_message(exc: BadImage) -> str:
    name = exc.path if exc.path not in ("<bytes>", "<stream>") else "the file"
    return {
        "empty_file": f"{name} is empty (0 bytes)",
        "not_an_image": f"{name} is not an image (JPEG, PNG, WebP, GIF, BMP, TIFF... are)",
        "too_many_pixels": f"{name} has too many pixels: {exc.detail}",
        "truncated": f"{name} is cut short: the image data ends early",
    }.get(exc.reason, f"{name} cannot be decoded ({exc.detail or exc.reason})")


def dogvae_problem(_request, exc: DogvaeError) -> JSONResponse:
    if isinstance(exc, BadImage):
        return problem(BAD_IMAGE_STATUS.get(exc.reason, 422), exc.reason, bad_image_message(exc))
    if isinstance(exc, StoreUnavailable):
        return problem(503, "no_latent_store", str(exc))
    if isinstance(exc, UnknownPhoto):
        return problem(404, "unknown_photo", str(exc))
    if isinstance(exc, UnknownBreed):
        return problem(404, "unknown_breed", str(exc))
    return problem(400, "bad_request", str(exc))


def validation_problem(_request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors())
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", [])[1:]) or "the request"
    return problem(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}", errors)


def http_problem(_request, exc: HTTPException) -> JSONResponse:
    reason = HTTP_REASONS.get(exc.status_code, "http_error")
    return problem(exc.status_code, reason, str(exc.detail))


def internal_problem(_request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer, so the server still logs it.
    return problem(500, "internal", f"the server failed: {type(exc).__name__}: {exc}")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DogvaeError, dogvae_problem)
    app.add_exception_handler(
        ApiProblem, lambda _r, exc: problem(exc.status, exc.reason, exc.error)
    )
    app.add_exception_handler(RequestValidationError, validation_problem)
    app.add_exception_handler(HTTPException, http_problem)
    app.add_exception_handler(Exception, internal_problem)


# --- listening ------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port), or a DogvaeError saying why not,
    before any model is loaded."""
    if not 0 <= port <= 65535:  # getaddrinfo would quietly take the port modulo 65536
        raise DogvaeError(f"--port {port}: a port is 0 (any free one) to 65535")
    try:
        family, kind, proto, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that do,
        # and with it on, every keep-alive response waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(2048)  # connections wait in the backlog from the moment the address prints
    except OSError as exc:
        raise DogvaeError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "is another server using the port? Try --port"
        ) from exc
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _uvicorn_server(app: FastAPI):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    data: str | Path | None = None,
    device: str = "cpu",
) -> None:
    """Load the run, log the page's address, serve until Ctrl-C."""
    sock = bind_socket(host, port)
    log.info("dogvae: loading %s...", run)
    app = create_app(run, data=data, progress=True, device=device)
    served = app.state.served
    if served.store_problem:
        log.warning("dogvae: %s", served.store_problem)
    url = address(sock)
    log.info("dogvae: serving %s at %s  (API docs: %s/docs; Ctrl-C stops)", run, url, url)
    if not is_loopback(host):
        log.warning(
            "dogvae: warning: the page has no login; anyone who reaches this address can use it"
        )
    _uvicorn_server(app).run(sockets=[sock])


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout=10.0):
    """Serve `app` on a thread (a notebook, a test) and yield its address; stops on exit."""
    sock = bind_socket(host, port)
    server = _uvicorn_server(app)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="dogvae-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DogvaeError(f"the server on {address(sock)} did not start")
            time.sleep(0.01)
        yield address(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
