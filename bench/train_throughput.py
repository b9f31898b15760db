"""Training throughput per preset: dogvae's own loop against a bare PyTorch loop.

For each preset (at its default batch size) it prints images/second for forward + backward +
optimiser step, peak resident memory, and the ratio bare / dogvae: dogvae's step includes its
data loading from the cache (on a GPU: from the copy held there), logging and progress bar,
and on a glibc CPU its `keep_freed_memory` setting, which the bare loop (as a user would write
it) lacks, so a ratio below 1 is that setting's gain.
Each measurement runs in its own process so peak memory is per configuration. Also compares
float32 with bf16 autocast (images/s, and validation ELBO after a short identical run).

A second table, "speed paths", times the bare loop with each layout (channels_last off / on)
and with `torch.compile`, against the layout dogvae picks by default (`channels_last="auto"`;
compile is off unless `dogvae train --compile`), and says whether each helps on this machine.
The variants run in one process, one step each in turn, so that other work on a shared
machine slows them alike.

    python bench/train_throughput.py                        # small64 and seed, CPU (or CUDA)
    python bench/train_throughput.py --presets small64 --steps 60
    python bench/train_throughput.py --device cuda --presets small64,res64,res128,seed \
        --precision bf16 --compile --no-speed-paths --json out.json   # what gpu_check.py runs
    python bench/train_throughput.py --presets small64 --speed-paths-only --steps 20
    python bench/train_throughput.py --full-epoch ../shared/data/dogs-full

`--compile` compiles the model in both loops of the first table (dogvae's as `train --compile`
does); peak memory is the process's resident set, and on a GPU also
`torch.cuda.max_memory_allocated`. `--json PATH` writes every figure printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dogvae.model import PRESETS, build_model, preset_config
from dogvae.optim import make_optimizer
from dogvae.precision import cpu_has_native_bf16
from dogvae.recipes import TRAINING_RECIPES
from dogvae.runtime import auto_channels_last
from dogvae.synth import synthesize
from dogvae.train import TrainConfig, train

BATCH_SIZE: int | None = None  # --batch-size: every loop's batch instead of the preset's


def batch_size(preset: str) -> int:
    return BATCH_SIZE or TRAINING_RECIPES[preset].batch_size


def peak_memory(device: str) -> dict:
    """This process's peak resident memory, and on a GPU its peak allocated GPU memory (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"peak_rss_mib": rss, "peak_gpu_mib": gpu}


def pick_device(name: str) -> str:
    """ "auto" -> cuda when there is a GPU, else cpu; "cuda" without one is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible on this machine")
    return name


def training_step(
    preset: str, precision: str, channels_last: bool, compile: bool = False, device: str = "cpu"
):
    """One bare training step on a fixed random batch (in memory, no logging), and the batch size."""
    device = torch.device(device)
    cfg = preset_config(preset)
    batch = batch_size(preset)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg).to(device, memory_format=fmt).train()
    opt = make_optimizer(
        model, 1e-4, 0.0, device
    )  # the optimiser dogvae uses, so the ratio is fair
    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, device=device).to(memory_format=fmt)
    dtype = torch.bfloat16 if precision == "bf16" else None
    forward = torch.compile(model) if compile else model  # as dogvae does: the forward pass only

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model.objective(x, forward(x))
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, batch


def bare_loop(
    preset: str, precision: str, steps: int, channels_last: bool, compile: bool, device: str
) -> dict:
    """The fastest honest loop: random batches already in memory, no logging."""
    step, batch = training_step(preset, precision, channels_last, compile, device)
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"images_per_s": steps * batch / (time.perf_counter() - t0)}


def interleaved_paths(preset: str, precision: str, steps: int, compile: bool, device: str) -> dict:
    """Images/s of each speed path, timed one step each in turn, so that other work on a
    shared machine slows them all alike; plus each one's warm-up (compile) seconds."""
    default = default_channels_last(preset, device)
    variants = {
        f"default (channels_last {'on' if default else 'off'})": (default, False),
        f"channels_last {'off' if default else 'on'}": (not default, False),
    }
    if compile:
        variants["default + torch.compile"] = (default, True)
    steps_by_name, warmup, seconds = {}, {}, {}
    for name, (channels_last, compiled) in variants.items():
        step, batch = training_step(preset, precision, channels_last, compiled, device)
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        warmup[name], seconds[name], steps_by_name[name] = time.perf_counter() - t0, 0.0, step
    for _ in range(steps):
        for name, step in steps_by_name.items():
            t0 = time.perf_counter()
            step()
            seconds[name] += time.perf_counter() - t0
    return {
        name: {"images_per_s": steps * batch / seconds[name], "warmup_s": warmup[name]}
        for name in variants
    }


def synth_for(preset: str, steps: int, root: Path) -> Path:
    """Synthetic data big enough for `steps` batches per epoch (after the validation split)."""
    cfg = preset_config(preset)
    batch = batch_size(preset)
    per_breed = -(-int(steps * batch / 0.9) // 8) + 1
    out = root / f"synth-{cfg.image_size}-{per_breed}"
    if not (out / "labels.csv").exists():
        synthesize(out, breeds=8, per_breed=per_breed, size=cfg.image_size, mutts=0, progress=False)
    return out


def dogvae_loop(
    preset: str, precision: str, steps: int, channels_last: bool, data: Path, compile: bool,
    device: str,
) -> dict:  # fmt: skip
    """dogvae's own `train`, two epochs; the second epoch's training rate (no validation in it)."""
    with tempfile.TemporaryDirectory() as run:
        cfg = TrainConfig(
            data=str(data), out=run, preset=preset, epochs=2, precision=precision,
            channels_last="on" if channels_last else "off", warmup_steps=10, compile=compile,
            batch_size=batch_size(preset),
            device=device, cache_dir=str(data.parent / "decoded"), progress=False,
        )  # fmt: skip
        summary = train(cfg)
        records = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": records[-1]["images_per_s"], "val_elbo": summary["val"]["elbo"]}


def worker(args) -> None:
    """One measurement in this process; prints one JSON line."""
    a = args
    if a.mode == "bare":
        result = bare_loop(a.presets, a.precision, a.steps, a.channels_last, a.compile, a.device)
    elif a.mode == "paths":
        result = interleaved_paths(a.presets, a.precision, a.steps, a.compile, a.device)
        return print("RESULT " + json.dumps(result))
    else:
        data = synth_for(a.presets, a.steps, Path(a.cache))
        result = dogvae_loop(
            a.presets, a.precision, a.steps, a.channels_last, data, a.compile, a.device
        )
    result.update(peak_memory(a.device))
    print("RESULT " + json.dumps(result))


def measure(
    mode: str,
    preset: str,
    precision: str,
    steps: int,
    channels_last: bool,
    cache: str,
    compile: bool = False,
    device: str = "cpu",
) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--presets", preset,
           "--precision", precision, "--steps", str(steps), "--cache", cache,
           "--device", device]  # fmt: skip
    if BATCH_SIZE:
        cmd += ["--batch-size", str(BATCH_SIZE)]
    if channels_last:
        cmd.append("--channels-last")
    if compile:
        cmd.append("--compile")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def full_epoch(data: str) -> None:
    """Seconds for one small64 epoch over a real data set at 64 px, cache already built."""
    with tempfile.TemporaryDirectory() as run:
        train(TrainConfig(data=data, out=run, preset="small64", epochs=1, progress=False))
        record = json.loads(Path(run, "metrics.jsonl").read_text().splitlines()[0])
    print(
        f"one small64 epoch over {data}: {record['seconds']:.1f} s ({record['images_per_s']:.0f} img/s)"
    )


def default_channels_last(preset: str, device: str) -> bool:
    """What `channels_last="auto"` picks (see dogvae.runtime.setup_runtime)."""
    return auto_channels_last(PRESETS[preset].model.image_size, device == "cuda")


def speed_paths(
    presets: list[str], precision: str, steps: int, cache: str, compile: bool, device: str
) -> list[dict]:
    """Bare-loop images/s with each layout and with torch.compile, against dogvae's default."""
    print(f"\nspeed paths ({precision}, bare loop, timed in alternation; ratio to the default)")
    print(f"{'preset':<8} {'variant':<26} {'img/s':>8} {'ratio':>6} {'warm-up s':>9}  verdict")
    rows = []
    for preset in presets:
        results = measure("paths", preset, precision, steps, False, cache, compile, device)
        base = next(iter(results.values()))
        for name, result in results.items():
            ratio = result["images_per_s"] / base["images_per_s"]
            verdict = "" if result is base else ("helps" if ratio > 1.05 else "does not help")
            print(f"{preset:<8} {name:<26} {result['images_per_s']:>8.1f} {ratio:>6.2f} "
                  f"{result['warmup_s']:>9.1f}  {verdict}")  # fmt: skip
            rows.append({"preset": preset, "variant": name, **result, "ratio": ratio})
    return rows


def throughput_table(args, device: str, precisions: list[str]) -> list[dict]:
    """Bare loop against dogvae's loop per preset and precision, each in its own process."""
    compiled = " (torch.compile)" if args.compile else ""
    memory = "peak GPU MiB" if device == "cuda" else "peak MiB"
    print(f"{'preset':<8} {'precision':<9} {'bare img/s':>10} {'dogvae img/s':>12} "
          f"{'bare/dogvae':>11} {memory:>12} {'val ELBO':>10}{compiled}")  # fmt: skip
    rows = []
    for preset in args.presets.split(","):
        for precision in precisions:
            channels_last = args.channels_last or default_channels_last(preset, device)
            common = (preset, precision, args.steps, channels_last, args.cache, args.compile)
            bare = measure("bare", *common, device)
            ours = measure("dogvae", *common, device)
            ratio = bare["images_per_s"] / ours["images_per_s"]
            peak = ours["peak_gpu_mib"] if device == "cuda" else ours["peak_rss_mib"]
            print(f"{preset:<8} {precision:<9} {bare['images_per_s']:>10.1f} "
                  f"{ours['images_per_s']:>12.1f} {ratio:>11.3f} {peak:>12.0f} "
                  f"{ours['val_elbo']:>10.1f}")  # fmt: skip
            rows.append({
                "preset": preset, "precision": precision, "compile": args.compile,
                "channels_last": channels_last, "bare": bare, "dogvae": ours,
                "bare_over_dogvae": ratio,
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="small64,seed")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per loop")
    parser.add_argument("--precision", default="both", choices=["both", "fp32", "bf16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--full-epoch", metavar="DATA", help="also time one epoch over DATA")
    parser.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out of the speed paths"
    )
    parser.add_argument("--speed-paths-only", action="store_true", help="only the second table")
    parser.add_argument("--no-speed-paths", action="store_true", help="only the first table")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model in the first table's loops"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    parser.add_argument("--batch-size", type=int, help="instead of each preset's own batch size")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["bare", "dogvae", "paths"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "dogvae-bench"))
    args = parser.parse_args()
    args.device = pick_device(args.device)
    global BATCH_SIZE
    BATCH_SIZE = args.batch_size
    if args.worker:
        return worker(args)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"native bf16 (CPU): {cpu_has_native_bf16()}")  # fmt: skip
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    report = {"device": args.device, "device_name": name, "torch": torch.__version__,
              "steps": args.steps, "throughput": [], "speed_paths": []}  # fmt: skip
    if not args.speed_paths_only:
        report["throughput"] = throughput_table(args, args.device, precisions)
    if not args.no_speed_paths:
        report["speed_paths"] = speed_paths(
            args.presets.split(","), precisions[0], args.steps, args.cache,
            not args.no_compile, args.device,
        )  # fmt: skip
    if args.full_epoch:
        full_epoch(args.full_epoch)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
