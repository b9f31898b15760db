"""Shared fixtures: where the real photos live, and small generated data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("DOGVAE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def shared_path(name: str) -> Path:
    """A folder under ../shared/data, or skip the test with the reason it is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real photos not found at {path} (a user's clone has no ../shared/data)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Session-wide fixtures (trained tiny models) decode into a private cache folder too."""
    previous = os.environ.get("DOGVAE_CACHE")
    os.environ["DOGVAE_CACHE"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if previous is None:
        os.environ.pop("DOGVAE_CACHE", None)
    else:
        os.environ["DOGVAE_CACHE"] = previous


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache folder, never the user's ~/.cache/dogvae."""
    monkeypatch.setenv("DOGVAE_CACHE", str(tmp_path_factory.mktemp("cache")))
