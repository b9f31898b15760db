"""The page end to end in real headless Chromium: upload a dog, read its breed, slide the mix.

Needs Debian's `chromium` (/usr/bin/chromium) and Playwright for Python (the dev extra). When
Chromium is missing and the tests run as root with apt-get, the set-up installs it; the test
skips, saying why, only where it cannot be had.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'dogvae[web]')")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)
import httpx  # noqa: E402

from dogvae.app import background_server, create_app  # noqa: E402

CHROMIUM = Path(os.environ.get("DOGVAE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def install_chromium() -> str | None:
    """Install Debian's chromium when it is missing and we may; None, or why it is missing."""
    if CHROMIUM.exists():
        return None
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return f"no Chromium at {CHROMIUM}, and apt-get as root is not available to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"installing Chromium failed: {' '.join(command)}: {exc}"
        if done.returncode != 0:
            return f"installing Chromium failed: {' '.join(command)}: {done.stderr.strip()[-300:]}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but not at {CHROMIUM}"


@pytest.fixture(scope="module")
def chromium() -> Path:
    why_not = install_chromium()
    if why_not:
        pytest.skip(why_not)
    return CHROMIUM


def test_upload_a_dog_read_its_breed_and_slide_the_mix_in_chromium(chromium, tiny_run, tmp_path):
    run, data = tiny_run
    dog = sorted((data / "mutts").glob("*.jpg"))[0]
    with background_server(create_app(run)) as url, sync_api.sync_playwright() as playwright:
        expected = httpx.post(
            f"{url}/api/identify", files={"image": (dog.name, dog.read_bytes())}, timeout=30
        ).json()
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data dir
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            problems = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.goto(url)

            page.set_input_files("#photo-input", str(dog))
            page.wait_for_selector("#top-breed[data-state=done]")
            page.wait_for_selector("#parents figure")
            first_bar = page.locator("#breed-bars li .name").first.get_attribute("title")
            assert first_bar == expected["top"][0]["breed"]
            assert page.locator("#breed-bars li").count() == len(expected["top"])
            shown = page.inner_text("#top-breed").lower()  # null when unlike any training dog
            wanted = (expected["breed"] or "unlike any training dog").replace("_", " ")
            assert shown == wanted

            # the photo is now end A of the mix; wait for its frame, then move the slider
            page.wait_for_selector("#mix-frame[data-src*='photo%3A'][data-t='0.50']")
            before = page.locator("#mix-frame").screenshot()
            page.locator("#mix-t").fill("1")
            page.wait_for_selector("#mix-frame[data-t='1.00']")
            after = page.locator("#mix-frame").screenshot()
            assert before != after, "the mixed dog did not change when the slider moved"

            with page.expect_download() as download:
                page.click("#save-strip")
            assert Path(download.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # New dogs: the training codes' mixture by default, the prior on request, the
            # same dogs as the API's for seed 0
            for source in ("gmm", "prior"):
                page.select_option("#sample-source", source)
                wanted = httpx.get(
                    f"{url}/api/sample", params={"n": 12, "seed": 0, "source": source}, timeout=30
                ).json()["images"]
                page.wait_for_function(
                    "src => document.querySelector('#samples img')?.src === src", arg=wanted[0]
                )
                shown = page.eval_on_selector_all("#samples img", "imgs => imgs.map(i => i.src)")
                assert shown == wanted

            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'page.png'}")
            assert problems == []
        finally:
            browser.close()
