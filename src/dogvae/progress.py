"""Progress bars: tqdm on stderr, with one switch for every bar the library draws.

A call's own `progress=False` turns its bar off; `set_progress(False)` turns them all off (a
notebook, a log file; `dogvae --quiet` does it), the way `logging.getLogger("dogvae")` is the
one switch for the library's messages.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

_bars_shown = True


def set_progress(shown: bool) -> bool:
    """Show (True) or hide (False) every progress bar from now on; returns the previous setting."""
    global _bars_shown
    previous, _bars_shown = _bars_shown, bool(shown)
    return previous


def progress_shown() -> bool:
    return _bars_shown


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **options) -> tqdm:
    """A tqdm bar on stderr (`options` as tqdm's), drawn when both `show` and the switch say so."""
    return tqdm(iterable, disable=not (show and _bars_shown), file=sys.stderr, **options)
