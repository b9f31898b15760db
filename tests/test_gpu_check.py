"""bench/gpu_check.py in its CPU mode: every step runs tiny on the CPU and the JSON says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_step_and_writes_its_json_and_text(tmp_path):
    out = tmp_path / "gpu-check"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CPU mode: --cpu was given" in done.stdout
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["schema_version"] == 1 and report["mode"] == "cpu"
    assert {name: step["status"] for name, step in report["steps"].items()} == {
        "pytest": "ok", "torchrun": "ok", "throughput": "ok",
    }, json.dumps(report["steps"], indent=1)[-3000:]  # fmt: skip
    assert report["ok"] is True

    tests = report["steps"]["pytest"]["tests"]
    assert tests["tests"] >= 9 and tests["skipped"] == tests["tests"]  # every cuda test skips
    assert any("needs a CUDA GPU" in reason for reason in tests["skip_reasons"])

    ddp = report["steps"]["torchrun"]
    assert ddp["nproc"] == 1 and ddp["runtime"]["device"] == "cpu"
    assert ddp["runtime"]["backend"] is None and ddp["expected_backend"] is None
    assert ddp["checkpoint"] == {"loads": True, "device": "cpu", "finite": True}

    (run,) = report["steps"]["throughput"]["runs"]
    assert run["preset"] == "small64" and run["compile"] is False
    for loop in ("bare", "dogvae"):
        assert run["result"][loop]["images_per_s"] > 0
        assert (
            run["result"][loop]["peak_rss_mib"] > 0 and run["result"][loop]["peak_gpu_mib"] is None
        )
    assert any("--compile are measured in CUDA mode only" in n for n in report["notes"])

    text = (out / "gpu-check.txt").read_text()
    assert "[ok] pytest -m cuda: 0 passed, 0 failed, 0 errors" in text
    assert "[ok] torchrun x1: device cpu" in text and "small64" in text
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.txt"]
