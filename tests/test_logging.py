"""The library speaks through the "dogvae" logger and one progress switch; the CLI alone sets
them up: INFO by default, `--quiet` warnings only and no bars, `--verbose` DEBUG too."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from test_data_corpus import BROKEN_COUNTS, GOOD_PER_BREED, make_broken_kaggle

import dogvae.cli as cli
from dogvae.cli import main
from dogvae.data.cache import load_images
from dogvae.progress import progress_bar, progress_shown

SKIPPED = f"skipped {sum(BROKEN_COUNTS.values())} of {2 * GOOD_PER_BREED + 8} files"


def test_a_cache_build_that_skips_files_warns_through_the_dogvae_logger(tmp_path, caplog):
    load_images(make_broken_kaggle(tmp_path / "dogs"), 8, progress=False, workers=1)
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert (record.name, record.levelno) == ("dogvae.data.cache", logging.WARNING)
    assert record.getMessage().startswith(SKIPPED + ": 1 empty_file, ")


NOTEBOOK = """
import logging, sys
from dogvae.data.cache import load_images
from dogvae.progress import set_progress
if sys.argv[2] == "quiet":
    logging.getLogger("dogvae").setLevel(logging.ERROR)
    set_progress(False)
load_images(sys.argv[1], 8, workers=1)
"""


@pytest.mark.parametrize("mode", ["as installed", "quiet"])
def test_without_logging_set_up_warnings_reach_stderr_and_a_notebook_can_silence_them(
    tmp_path, mode
):
    root = make_broken_kaggle(tmp_path / "dogs")
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK, str(root), mode],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    if mode == "quiet":
        assert done.stderr == ""
    else:  # Python's last-resort handler: warnings only, as plain lines, and the bar
        assert SKIPPED in done.stderr and "images at 8px" in done.stderr
        assert "reading the image cache" not in done.stderr


@pytest.fixture
def chatty_command(monkeypatch):
    """`dogvae inspect` replaced by a command that logs at every level and draws a bar."""

    def chatty(args) -> int:
        log = logging.getLogger("dogvae.chatty")
        log.debug("a debug line")
        log.info("an info line")
        log.warning("a warning line")
        for _ in progress_bar(range(3), desc="counting"):
            pass
        return 0

    monkeypatch.setattr(cli, "cmd_inspect", chatty)


@pytest.mark.parametrize(
    "flags, shown",
    [
        ([], {"an info line", "a warning line", "counting"}),
        (["--quiet"], {"a warning line"}),
        (["-q"], {"a warning line"}),
        (["--verbose"], {"a debug line", "an info line", "a warning line", "counting"}),
    ],
)
def test_quiet_and_verbose_set_what_the_library_shows_on_stderr(
    chatty_command, tmp_path, capsys, flags, shown
):
    everything = {"a debug line", "an info line", "a warning line", "counting"}
    for argv in (flags + ["inspect", str(tmp_path)], ["inspect", str(tmp_path)] + flags):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert out == ""
        assert {text for text in everything if text in err} == shown, argv


def test_the_cli_leaves_logging_and_the_bars_as_it_found_them(chatty_command, tmp_path):
    logger = logging.getLogger("dogvae")
    before = (logger.level, list(logger.handlers), progress_shown())
    assert main(["--quiet", "inspect", str(tmp_path)]) == 0
    assert (logger.level, list(logger.handlers), progress_shown()) == before


def test_dogvae_quiet_synth_draws_no_progress_bar(tmp_path, capsys):
    args = ["--breeds", "2", "--per-breed", "2", "--size", "16", "--mutts", "0"]
    assert main(["synth", str(tmp_path / "loud"), *args]) == 0
    assert "4/4" in capsys.readouterr().err  # the bar, at its end
    assert main(["--quiet", "synth", str(tmp_path / "quiet"), *args]) == 0
    assert capsys.readouterr().err == ""


def test_verbose_shows_the_librarys_own_debug_messages(tmp_path, capsys, monkeypatch):
    """A real one: where the image cache is read from, when a command loads a cached set."""
    data = make_broken_kaggle(tmp_path / "dogs")
    load_images(data, 8, progress=False, workers=1)

    def load(args) -> int:
        load_images(args.data, 8, workers=1)
        return 0

    monkeypatch.setattr(cli, "cmd_inspect", load)
    assert main(["inspect", str(data), "-v"]) == 0
    err = capsys.readouterr().err
    assert "reading the image cache" in err and SKIPPED in err
    assert main(["inspect", str(data)]) == 0
    assert "reading the image cache" not in capsys.readouterr().err
