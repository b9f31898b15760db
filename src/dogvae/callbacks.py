"""What happens around the training loop, as callbacks on its named events.

`Trainer` (trainer.py) fires, in order: `on_train_begin`, then per epoch `on_epoch_begin`,
`on_step_begin` / `on_step_end` per step, `on_epoch_end` after validation; `on_stop` when a
stop was asked for mid-epoch, `on_train_end` with the summary, and always `close`. Each hook gets
the trainer, whose `state` (epoch, step, totals, best ELBO) and `setup` (model, optimiser, run
folder, config) it may read. `default_callbacks` are what `dogvae train` runs; add your own from
Python with `train(cfg, callbacks=[...])`. Under torchrun every process runs the callbacks;
those that write files do so on rank 0 only, and one that calls `trainer.request_stop` must
decide alike in every process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from dogvae import checkpoint
from dogvae.atomic import atomic_path, crash_point
from dogvae.errors import TrainingError
from dogvae.pictures import image_grid, pairs_grid, save_png
from dogvae.progress import progress_bar
from dogvae.runtime import to_device

if TYPE_CHECKING:
    from dogvae.trainer import StepStats, Trainer

logger = logging.getLogger(__name__)

# The exit status of a run stopped by a signal, as a shell reports a process it killed (128 + N).
EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}


class Callback:
    """A hook on the training loop's events; override the ones you need."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None: ...
    def on_step_begin(self, trainer: Trainer, epoch: int, batch: int) -> None: ...
    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict) -> None: ...
    def on_stop(self, trainer: Trainer) -> None: ...
    def on_train_end(self, trainer: Trainer, summary: dict) -> None: ...
    def close(self, trainer: Trainer) -> None: ...


class Callbacks:
    """Several callbacks, each event fired on them in order."""

    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def fire(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)


class NanGuard(Callback):
    """End training when a step's loss is not a number. The error escapes before anything is
    saved, so the last good checkpoint stays; the in-memory model has taken the bad step."""

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if not math.isfinite(stats.loss):
            raise TrainingError(
                f"the loss became {stats.loss} at epoch {stats.epoch + 1}, batch {stats.batch + 1} "
                f"(lr {stats.lr:.2e}); the last good checkpoint in {trainer.setup.run} is kept. "
                "Try a lower --lr or --precision fp32."
            )


class StopOnSignal(Callback):
    """Turn the first Ctrl-C or SIGTERM into a stop after the current step, in every process.

    A second one a second or more later means "now": KeyboardInterrupt for Ctrl-C, SystemExit
    with status 143 for SIGTERM. Under torchrun one Ctrl-C can arrive twice (from the terminal
    and again from torchrun), so a repeat within a second is the same request. The trainer adds
    each process's requests to the step's statistics, so all of them stop after the same step.
    """

    def __init__(self):
        self.signal: int | None = None  # the first one received
        self._first = 0.0
        self._previous = {}

    def requests(self) -> tuple[bool, bool]:
        """(Ctrl-C asked to stop, SIGTERM asked to stop) in this process."""
        return self.signal == signal.SIGINT, self.signal == signal.SIGTERM

    def on_train_begin(self, trainer: Trainer) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        trainer.stop_requests = self.requests

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal, self._first = signum, time.monotonic()
        elif time.monotonic() - self._first > 1.0:
            if signum == signal.SIGTERM:
                raise SystemExit(EXIT_STATUS["SIGTERM"])
            raise KeyboardInterrupt

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        if stats.sigint or stats.sigterm:
            trainer.request_stop("SIGINT" if stats.sigint else "SIGTERM")

    def close(self, trainer: Trainer) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class ProgressBar(Callback):
    """A bar per epoch with the running loss, its parts and images per second (hidden by
    `progress=False` in the TrainConfig or `dogvae.progress.set_progress(False)`)."""

    def __init__(self):
        self.bar = None

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        s = trainer.setup
        self.bar = progress_bar(
            total=s.steps_per_epoch, initial=trainer.state.batch_in_epoch, unit="batch",
            desc=f"epoch {epoch + 1}/{s.cfg.epochs}", leave=False,
        )  # fmt: skip

    def on_step_end(self, trainer: Trainer, stats: StepStats) -> None:
        self.bar.update(1)
        if stats.batch % 10 == 0 or stats.batch + 1 == trainer.setup.steps_per_epoch:
            totals = trainer.state.totals
            loss, recon, kl = totals.means()
            rate = totals.images / max(trainer.state.seconds, 1e-9)
            self.bar.set_postfix(
                loss=f"{loss:.1f}", recon=f"{recon:.1f}", kl=f"{kl:.1f}", img_s=f"{rate:.0f}"
            )

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.close(trainer)

    def close(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RunRecords(Callback):
    """What rank 0 keeps of each epoch: a line of metrics.jsonl, TensorBoard scalars and
    images, and PNG pictures of reconstructions and prior samples under RUN/images/."""

    def __init__(self):
        self.tb = None

    def on_train_begin(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = trainer.setup.run
        self._keep_epochs(trainer.state.epoch)
        self.tb = SummaryWriter(str(self.run / "tb"))

    def _keep_epochs(self, epochs: int) -> None:
        """Drop metrics.jsonl's lines past `epochs`: a run killed between writing an epoch's
        line and saving its checkpoint trains that epoch again on resume."""
        path = self.run / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _logged_epoch(line) <= epochs]
        if kept != lines:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(kept))

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        with open(self.run / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        for split in ("train", "val"):
            for key, value in record.get(split, {}).items():
                self.tb.add_scalar(f"{split}/{key}", value, record["epoch"])
        self.tb.add_scalar("lr", record["lr"], record["epoch"])
        self.tb.flush()
        crash_point("metrics")
        self._pictures(trainer, record["epoch"])

    def _pictures(self, trainer: Trainer, epoch: int) -> None:
        s = trainer.setup
        model = s.eval_model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            recon = model.reconstruct(to_device(s.fixed, s.rt)).cpu()
            gen = torch.Generator(device=s.rt.device).manual_seed(0)
            samples = model.sample(16, generator=gen).cpu()
        model.train(was_training)
        save_png(pairs_grid(s.fixed, recon), self.run / "images" / f"recon-{epoch:03d}.png")
        save_png(image_grid(samples, ncols=8), self.run / "images" / f"samples-{epoch:03d}.png")
        self.tb.add_images("val/reconstruction", recon, epoch)
        self.tb.add_images("prior/samples", samples, epoch)

    def close(self, trainer: Trainer) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _logged_epoch(line: str) -> float:
    """The epoch a metrics.jsonl line records; infinity for a line cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class Checkpoints(Callback):
    """A checkpoint generation after every epoch (with the best weights when the epoch was the
    best so far) and when a run stops mid-epoch, so that `--resume` goes on from either."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        s = trainer.setup
        best = None
        if trainer.epoch_was_best:
            best = (s.eval_model, {**s.info, "epoch": record["epoch"], "metrics": record["val"]})
        self._save(trainer, best)

    def on_stop(self, trainer: Trainer) -> None:
        self._save(trainer, None)

    def _save(self, trainer: Trainer, best) -> None:
        s = trainer.setup
        checkpoint.save_checkpoint(s.run, last=(s.model, s.info, trainer.state_dict()), best=best)


class ConsoleLog(Callback):
    """The run's story on the `dogvae` log: resuming, each epoch's figures, a stop and how to
    resume it (a warning, so that `--quiet` still says it)."""

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.setup.cfg.resume:
            logger.info("resuming %s at epoch %d, batch %d", trainer.setup.run,
                        trainer.state.epoch + 1, trainer.state.batch_in_epoch)  # fmt: skip

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        logger.info(epoch_line(record))

    def on_stop(self, trainer: Trainer) -> None:
        s, state = trainer.setup, trainer.state
        logger.info("stopped at epoch %d, batch %d; saved %s.", state.epoch + 1,
                    state.batch_in_epoch, s.run / checkpoint.LAST_WEIGHTS)  # fmt: skip
        logger.warning("resume with: dogvae train --out %s --resume", s.cfg.out)


class EpochFunction(Callback):
    """`fn(record)` after each epoch's validation and checkpoint (the `on_epoch` of `train`)."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.fn(record)


def default_callbacks(progress: bool, main: bool) -> list[Callback]:
    """What `dogvae train` runs: the NaN guard first (nothing is saved after a bad step), the
    stop on signals, and on rank 0 the bar, the records, the checkpoints and the log, in the
    order a crash test expects (metrics.jsonl is written before the checkpoint)."""
    callbacks = [NanGuard(), StopOnSignal()]
    if main:
        callbacks += [ProgressBar()] if progress else []
        callbacks += [RunRecords(), Checkpoints(), ConsoleLog()]
    return callbacks


def epoch_line(record: dict) -> str:
    v = record["val"]
    accuracy = f"top-1 {v['top1']:.1%}, top-5 {v['top5']:.1%}, " if "top1" in v else ""
    return (
        f"epoch {record['epoch']}: val ELBO {v['elbo']:.1f} nats/image ({v['bits_per_dim']:.3f} bits/dim), "
        f"recon {v['recon']:.1f}, KL {v['kl']:.1f}, PSNR {v['psnr']:.2f} dB, {accuracy}"
        f"active units {v['active_units']}, {record['images_per_s']:.0f} img/s"
    )


def quality_line(summary: dict) -> str:
    b = summary["baselines"]
    return (
        f"validation PSNR {summary['val']['psnr']:.2f} dB (epoch {summary['best_epoch']}) vs "
        f"mean image {b['mean_image_psnr']:.2f} dB and PCA-{b['pca_components']} {b['pca_psnr']:.2f} dB"
    )
