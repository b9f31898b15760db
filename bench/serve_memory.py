"""Peak memory of `dogvae serve` under concurrent uploads of one very wide PNG.

A 1 x 39,000,000 PNG is ~150 KB on the wire, under the 40-megapixel limit, and decodes to
117 MB (RGB) or 156 MB (RGBA) before conversions. The script starts `dogvae serve RUN` on
loopback, sends CLIENTS uploads of it at once, and prints the server's peak resident memory
(VmHWM) after start-up and after the uploads. A watchdog stops the server if its memory passes
--kill-above-mb, so a regression cannot take the machine down.

    .venv/bin/python bench/serve_memory.py --run demo-out/run [--clients 20] [--mode RGBA]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image


def wide_png(pixels: int, mode: str) -> bytes:
    colour = (120, 80, 40, 200)[: len(mode)]
    buffer = io.BytesIO()
    Image.new(mode, (pixels, 1), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start_server(run: str, log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "dogvae", "serve", run, "--port", "0"]
    server = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if " at http://" in line:
                return server, line.split(" at ")[1].split()[0]
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start in 300 s")


def watchdog(server: subprocess.Popen, limit_kb: int, tripped: list) -> None:
    while server.poll() is None:
        try:
            if memory_kb(server.pid, "VmRSS") > limit_kb:
                tripped.append(True)
                server.kill()
                return
        except (OSError, KeyError):
            return
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--pixels", type=int, default=39_000_000, help="the PNG is 1 x PIXELS")
    parser.add_argument("--mode", choices=["RGB", "RGBA"], default="RGB")
    parser.add_argument("--kill-above-mb", type=int, default=12_000)
    args = parser.parse_args()

    png = wide_png(args.pixels, args.mode)
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(args.run, Path(tmp) / "serve.log")
        tripped: list = []
        guard = threading.Thread(
            target=watchdog, args=(server, args.kill_above_mb * 1024, tripped), daemon=True
        )
        guard.start()
        try:
            idle_mb = memory_kb(server.pid, "VmHWM") / 1024

            def upload(i: int) -> int:
                files = {"image": (f"wide{i}.png", png, "image/png")}
                try:
                    return httpx.post(f"{url}/api/photos", files=files, timeout=600).status_code
                except httpx.HTTPError:
                    return -1

            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                statuses = list(pool.map(upload, range(args.clients)))
            seconds = time.perf_counter() - started
            peak_mb = memory_kb(server.pid, "VmHWM") / 1024 if server.poll() is None else None
        finally:
            server.terminate()
            server.wait(30)
    print(
        f"{args.clients} concurrent uploads of a 1 x {args.pixels:,} {args.mode} PNG "
        f"({len(png):,} bytes): statuses {sorted(set(statuses))}, {seconds:.1f} s"
    )
    print(f"server peak RSS after start-up: {idle_mb:.0f} MB")
    if tripped:
        print(f"server peak RSS: over {args.kill_above_mb} MB (stopped by the watchdog)")
    else:
        print(f"server peak RSS after the uploads: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
