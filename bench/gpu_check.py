"""One prepared GPU check of dogvae, under 8 minutes on one GPU; writes one JSON and one text file.

    python bench/gpu_check.py --out gpu-check/          # on a CUDA machine
    python bench/gpu_check.py --out gpu-check/ --cpu    # the CPU stand-in (what the test runs)

Steps, each with its own timeout, inside one overall time budget (`--budget-s`); a step that
fails or times out is recorded and the next one runs:

1. `pytest -m cuda`: tests/test_cuda.py (every preset trains on the GPU from the device cache,
   a resume is bit-exact, runs move between CPU and GPU, the web service answers).
2. `torchrun --standalone --nproc_per_node=N -m dogvae train` (N = GPUs present) for one epoch
   on a small `dogvae synth` set, then: the checkpoint loads and reconstructs on the device, and
   config.json's runtime says NCCL when N > 1 (one process has no process group).
3. bench/train_throughput.py for small64, res64, res128 and seed: images/s of a bare loop and of
   dogvae's loop, peak GPU memory; eager first, then with --compile (what does not fit in the
   budget is recorded as skipped).

Without a GPU (or with --cpu) the same steps run on the CPU, tiny: the cuda tests skip (their
reasons are recorded), torchrun trains a tiny model in one process, the throughput step times
small64 for one step without compile. Each CUDA part says what it skipped. Exits 0 either way:
the verdict is in the files (`ok`, and each step's `status`: ok, failed, timeout or skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this tree's dogvae, as the children import it
SCHEMA_VERSION = 1
GPU_PRESETS = ["small64", "res64", "res128", "seed"]
TINY_MODEL = {
    "image_size": 32, "latent_dim": 8, "enc_widths": [8, 16, 16], "dec_widths": [16, 8, 8],
    "dec_start_channels": 16,
}  # fmt: skip


class Check:
    """The run's settings, its clock, its messages and what it found."""

    def __init__(self, out: Path, cuda: bool, budget_s: float):
        self.out, self.cuda = out, cuda
        self.work = out / "work"
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.notes: list[str] = []
        self.steps: dict[str, dict] = {}

    def say(self, message: str) -> None:
        print(message, flush=True)
        self.notes.append(message)

    def timeout(self, wanted: float) -> float:
        """A step's timeout: what it wants, or what is left of the budget if that is less."""
        return max(0.0, min(wanted, self.deadline - time.monotonic()))

    def env(self) -> dict:
        """Children import this tree's dogvae, decode into the check's own cache, and get
        the cuBLAS setting that deterministic kernels need."""
        path = os.pathsep.join(p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH")] if p)
        return {
            **os.environ, "PYTHONPATH": path, "DOGVAE_CACHE": str(self.work / "cache"),
            "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        }  # fmt: skip


def run_command(check: Check, cmd: list[str], wanted_timeout: float) -> dict:
    """Run `cmd` in its own process group (torchrun's workers too); on timeout end that group."""
    timeout = check.timeout(wanted_timeout)
    record = {"command": " ".join(map(str, cmd)), "timeout_s": round(timeout, 1)}
    if timeout < 5:
        return {**record, "status": "skipped", "reason": "the time budget is spent"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(c) for c in cmd], cwd=ROOT, env=check.env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = "timeout"
    tail = (output or "").splitlines()[-40:]
    return {**record, "status": status, "returncode": proc.returncode,
            "seconds": round(time.monotonic() - t0, 1), "output_tail": tail}  # fmt: skip


# --- machine ---------------------------------------------------------------------------------


def machine() -> dict:
    facts = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "gpus": [],
    }  # fmt: skip
    if torch.cuda.is_available():
        facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        facts["cudnn"] = torch.backends.cudnn.version()
        facts["capability"] = list(torch.cuda.get_device_capability(0))
        try:
            facts["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except (AttributeError, RuntimeError):
            facts["nccl"] = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"]
        try:
            smi = subprocess.run(query, capture_output=True, text=True, timeout=20)
            facts["nvidia_smi"] = smi.stdout.strip().splitlines()
        except (OSError, subprocess.TimeoutExpired) as exc:
            facts["nvidia_smi"] = [f"failed: {exc}"]
    return facts


# --- step 1: pytest -m cuda --------------------------------------------------------------------


def junit_counts(path: Path) -> dict:
    """Passed, failed, errors and skipped tests, and each skip's reason, from pytest's XML."""
    suite = ET.parse(path).getroot().find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "skip_reasons": reasons, "failed_tests": failed}


def step_pytest(check: Check) -> dict:
    if not check.cuda:
        check.say("pytest -m cuda: no GPU, so every cuda test skips here; running it to record why")
    xml = check.work / "pytest-cuda.xml"
    # on the CPU only the file that holds cuda tests: collecting them all costs seconds
    where = "tests" if check.cuda else "tests/test_cuda.py"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", where]  # fmt: skip
    record = run_command(check, cmd, 240 if check.cuda else 90)
    if xml.is_file():
        record["tests"] = junit_counts(xml)
        if record["status"] == "ok" and check.cuda and record["tests"]["skipped"]:
            record["status"] = "failed"  # on a GPU nothing may skip
    return record


# --- step 2: torchrun ---------------------------------------------------------------------------


def train_command(check: Check, nproc: int, data: Path, run: Path) -> list:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "dogvae", "train", "--data", data, "--out", run,
           "--epochs", "1", "--json"]  # fmt: skip
    if check.cuda:
        return [*cmd, "--preset", "small64", "--batch-size", str(32 * nproc), "--device", "cuda"]
    config = check.work / "tiny.json"
    train = {"batch_size": 16, "warmup_steps": 2, "progress": False}
    config.write_text(json.dumps({"preset": "small64", "model": TINY_MODEL, "train": train}))
    return [*cmd, "--config", config, "--device", "cpu"]


def loaded_checkpoint(run: Path, device: str) -> dict:
    """Whether the run's best weights load on `device` and reconstruct finite pictures."""
    import dogvae

    model = dogvae.load(run, device=device)
    size = model.config.image_size
    with torch.no_grad():
        recon = model.reconstruct(torch.rand(2, 3, size, size, device=device))
    return {"loads": True, "device": str(recon.device), "finite": bool(torch.isfinite(recon).all())}


def step_torchrun(check: Check, nproc: int) -> dict:
    data, run = check.work / "ddp-data", check.work / "ddp-run"
    size, per_breed = (64, 40) if check.cuda else (32, 12)
    from dogvae.cli import main as dogvae_cli

    synth = ["synth", str(data), "--breeds", "4", "--per-breed", str(per_breed),
             "--size", str(size), "--mutts", "0", "--json"]  # fmt: skip
    try:
        dogvae_cli(synth)  # in this process: one interpreter start less
    except Exception as exc:  # recorded, not fatal
        return {"status": "failed", "failed_at": "dogvae " + " ".join(synth), "error": repr(exc)}
    if not check.cuda:
        check.say(f"torchrun: no GPU, so {nproc} CPU process trains a tiny model; NCCL (and "
                  "any process group: one process needs none) is checked in CUDA mode only")  # fmt: skip
    record = {**run_command(check, train_command(check, nproc, data, run), 150), "nproc": nproc}
    if record["status"] != "ok":
        return record
    runtime = json.loads((run / "config.json").read_text()).get("runtime", {})
    expected = None if nproc == 1 else ("nccl" if check.cuda else "gloo")
    record.update(runtime=runtime, expected_backend=expected)
    try:
        record["checkpoint"] = loaded_checkpoint(run, "cuda" if check.cuda else "cpu")
    except Exception as exc:  # recorded, not fatal: the next steps still run
        record["checkpoint"] = {"loads": False, "error": f"{type(exc).__name__}: {exc}"}
    good = record["checkpoint"].get("finite") and runtime.get("backend") == expected
    record["status"] = "ok" if good else "failed"
    return record


# --- step 3: throughput ---------------------------------------------------------------------------


def throughput_run(
    check: Check, preset: str, compile: bool, precision: str, steps: int, batch: int | None
) -> dict:
    result = check.work / f"throughput-{preset}{'-compile' if compile else ''}.json"
    cmd = [sys.executable, ROOT / "bench" / "train_throughput.py", "--device",
           "cuda" if check.cuda else "cpu", "--presets", preset, "--precision", precision,
           "--steps", str(steps), "--no-speed-paths", "--json", result,
           "--cache", check.work / "bench-cache"]  # fmt: skip
    if compile:
        cmd.append("--compile")
    if batch:
        cmd += ["--batch-size", str(batch)]
    wanted = (150 if compile else 90) if check.cuda else 90
    record = {"preset": preset, "compile": compile, **run_command(check, cmd, wanted)}
    if record["status"] == "ok":
        record["result"] = json.loads(result.read_text())["throughput"][0]
    return record


def step_throughput(check: Check) -> dict:
    if check.cuda:
        from dogvae.precision import cuda_has_native_bf16

        precision = "bf16" if cuda_has_native_bf16(torch.device("cuda", 0)) else "fp32"
        presets, steps, batch, compiles = GPU_PRESETS, 20, None, [False, True]
    else:
        check.say("throughput: no GPU, so small64 is timed on the CPU, 2 steps of 16 images; "
                  "the res64, res128 and seed presets and --compile are measured in CUDA mode only")  # fmt: skip
        precision, presets, steps, batch, compiles = "fp32", ["small64"], 2, 16, [False]
    runs = [
        throughput_run(check, p, c, precision, steps, batch) for c in compiles for p in presets
    ]  # eager runs first, then --compile; a run past the budget is recorded as skipped
    statuses = {r["status"] for r in runs}
    status = "ok" if statuses <= {"ok", "skipped"} and "ok" in statuses else "failed"
    return {"status": status, "precision": precision, "steps": steps, "runs": runs}


# --- report --------------------------------------------------------------------------------------


def summary_lines(report: dict) -> list[str]:
    m, steps = report["machine"], report["steps"]
    where = ", ".join(m["gpus"]) or "no GPU"
    lines = [f"dogvae GPU check: mode {report['mode']} ({where}); torch {m['torch']}, "
             f"CUDA {m['torch_cuda']}; {report['seconds']:.0f} s; ok: {report['ok']}"]  # fmt: skip
    t = steps["pytest"].get("tests", {})
    lines.append(f"[{steps['pytest']['status']}] pytest -m cuda: {t.get('passed', '?')} passed, "
                 f"{t.get('failures', '?')} failed, {t.get('errors', '?')} errors, "
                 f"{t.get('skipped', '?')} skipped ({steps['pytest'].get('seconds', 0)} s)")  # fmt: skip
    lines += [f"    skipped: {reason}" for reason in t.get("skip_reasons", [])]
    lines += [f"    failed: {name}" for name in t.get("failed_tests", [])]
    tr = steps["torchrun"]
    rt, ck = tr.get("runtime", {}), tr.get("checkpoint", {})
    lines.append(f"[{tr['status']}] torchrun x{tr.get('nproc')}: device {rt.get('device')}, "
                 f"backend {rt.get('backend')} (expected {tr.get('expected_backend')}), "
                 f"precision {rt.get('precision')}; checkpoint loads: {ck.get('loads')}, "
                 f"finite: {ck.get('finite')} ({tr.get('seconds', 0)} s)")  # fmt: skip
    th = steps["throughput"]
    lines.append(f"[{th['status']}] throughput ({th.get('precision')}, {th.get('steps')} steps):")
    for r in th.get("runs", []):
        label = f"{r['preset']}{' +compile' if r['compile'] else ''}"
        if "result" not in r:
            lines.append(f"    {label:<16} {r['status']} {r.get('reason', '')}")
            continue
        bare, ours = r["result"]["bare"], r["result"]["dogvae"]
        peak = ours["peak_gpu_mib"] if ours["peak_gpu_mib"] is not None else ours["peak_rss_mib"]
        kind = "GPU" if ours["peak_gpu_mib"] is not None else "RSS"
        lines.append(f"    {label:<16} bare {bare['images_per_s']:8.1f} img/s, dogvae "
                     f"{ours['images_per_s']:8.1f} img/s (bare/dogvae "
                     f"{r['result']['bare_over_dogvae']:.2f}), peak {kind} {peak:.0f} MiB, "
                     f"{r['seconds']} s")  # fmt: skip
    lines += ["", "notes:", *(f"  {n}" for n in report["notes"])]
    for name, step in steps.items():
        records = step.get("runs", [step])
        for rec in records:
            if rec.get("status") not in ("ok", "skipped") and rec.get("output_tail"):
                lines += ["", f"--- {name} output ({rec['command']}) ---", *rec["output_tail"]]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and text")
    parser.add_argument("--cpu", "--dry-run", action="store_true", dest="cpu",
                        help="the CPU stand-in even where there is a GPU")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=450, help="all steps together")
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/work (data, runs)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    check = Check(args.out, cuda, args.budget_s)
    shutil.rmtree(check.work, ignore_errors=True)
    check.work.mkdir(parents=True)
    if not cuda:
        why = (
            "--cpu was given"
            if args.cpu
            else "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        )
        check.say(f"CPU mode: {why}; each step runs its CPU stand-in, tiny")
    nproc = max(1, torch.cuda.device_count()) if cuda else 1
    check.steps["pytest"] = step_pytest(check)
    check.steps["torchrun"] = step_torchrun(check, nproc)
    check.steps["throughput"] = step_throughput(check)
    report = {
        "schema_version": SCHEMA_VERSION, "mode": "cuda" if cuda else "cpu",
        "seconds": round(time.monotonic() - check.started, 1), "budget_s": args.budget_s,
        "ok": all(s["status"] == "ok" for s in check.steps.values()),
        "machine": machine(), "steps": check.steps, "notes": check.notes,
    }  # fmt: skip
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    text = "\n".join(summary_lines(report)) + "\n"
    (args.out / "gpu-check.txt").write_text(text)
    print("\n" + text, end="")
    print(f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.txt'}")
    if not args.keep_work:
        shutil.rmtree(check.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
