"""Crash-safe file writes: write beside the target, flush to disk, then rename over it.

A crash, Ctrl-C or kill at any moment leaves either the old file or the new one, never half.
A process killed mid-write leaves its temporary (`.NAME.tmp-HOST-PID`) behind; the next write
of the same file, and `remove_stale_temporaries`, clear those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

CRASH_ENV = "DOGVAE_CRASH_AT"
_crash_counts: dict[str, int] = {}
_WRITER = re.compile(r"\.tmp-(?P<host>.+)-(?P<pid>\d+)$")


def temporary_path(path: str | Path, tag: str = "") -> Path:
    """`.NAME[.TAG].tmp-HOST-PID` beside `path`: it names its writer, so that a dead writer's
    can be told from a live one's (on a shared disk, only by the machine that made it)."""
    path = Path(path)
    tag = f".{tag}" if tag else ""
    return path.with_name(f".{path.name}{tag}.tmp-{socket.gethostname()}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path, tag: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.
    A `tag` (see `temporary_path`) keeps two writers of `path` in one process apart."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = temporary_path(path, tag)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):  # a read-only folder: keep the error that matters
            tmp.unlink(missing_ok=True)


def crash_point(step: str) -> None:
    """Test hook: SIGKILL this process at the write step `step` when $DOGVAE_CRASH_AT names
    it (`STEP`, or `STEP@N` for its Nth pass), as a power cut or the OOM killer would."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != step:
        return
    _crash_counts[step] = _crash_counts.get(step, 0) + 1
    if _crash_counts[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or new file inside `path` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(folder: str | Path, name: str = "") -> list[Path]:
    """Delete the temporaries in `folder` (of the file `name`, or of any) whose writer died
    mid-write (SIGKILL, power loss); a live process's are left alone. Returns what went."""
    removed = []
    host = socket.gethostname()
    for path in Path(folder).glob(f".{glob.escape(name)}*.tmp-*"):
        writer = _WRITER.search(path.name)
        if writer and writer["host"] == host and not _process_alive(int(writer["pid"])):
            with contextlib.suppress(OSError):  # a read-only folder, or another sweeper
                path.unlink()
                removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def json_text(obj) -> str:
    """How dogvae writes JSON files: indented, keys sorted, one final newline."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj))
    return Path(path)
