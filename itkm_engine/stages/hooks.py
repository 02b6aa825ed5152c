"""What happens after each completed epoch: named hooks that the loop runs in order.

In fast-reid's manner (``fastreid.engine.hooks.HookBase``): the loop (:func:`.loop.run_stage`)
knows nothing of workspaces or files; the trainer hands it a list of hooks and the loop calls each
one's :meth:`EpochHook.after_epoch` in that order.  The trainer's order is the resume contract
(ADR 0004):

1. :class:`CheckFinite` -- weights that went NaN/inf stop the round before anything is written;
   :class:`StageClock` -- the stage's seconds so far, so the saved state carries them;
2. :class:`SaveProgress` -- ``checkpoints/progress.pt`` with the epoch's log values, so a kill
   before the next step loses nothing (resume re-logs the epoch from the file);
3. :class:`LogEpoch` -- the epoch in the workspace's log, and the round's position;
4. :class:`RecordFailedImages` -- images found unreadable during the epoch are marked.

Only the main process writes: the trainer gives other ranks :class:`CheckFinite` alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingDivergedError
from ..features import record_failed_images
from ..model.checkpoint import save_checkpoint
from .context import RoundContext

__all__ = ["EpochHook", "CheckFinite", "StageClock", "SaveProgress", "LogEpoch", "RecordFailedImages", "record_failed",
           "outputs_to_state", "outputs_from_state", "PROGRESS_FORMAT"]

#: ``state["format"]`` of the progress file.
PROGRESS_FORMAT = "itkm-progress-v1"


class EpochHook:
    """One named step after every completed epoch of every stage."""

    def after_epoch(self, stage, epoch: int, values: dict[str, float]) -> None:
        """``stage`` (a :class:`~.loop.Stage`) finished ``epoch``; ``values``: its averaged loss
        terms and metrics."""


class CheckFinite(EpochHook):
    """No epoch whose weights went NaN/inf is ever saved (it would poison every later run).
    Remembers the last good epoch, for the message that says where the round rolls back to."""

    def __init__(self, model, last_good: str = "the round's start") -> None:
        self.model = model
        self.last_good = last_good

    def after_epoch(self, stage, epoch: int, values: dict[str, float]) -> None:
        for name, p in self.model.named_parameters():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise TrainingDivergedError(f"{stage.name} epoch {epoch + 1}: weights became NaN or infinite ({name})")
        self.last_good = f"{stage.name} epoch {epoch + 1}"


class StageClock(EpochHook):
    """Seconds spent per stage (``timing[stage]``, added up over the round's runs): the round's
    duration and the next round's time-left basis (``itkm_engine/eta.py``).  The trainer calls
    :meth:`start` before a stage prepares and :meth:`stop` after it published."""

    def __init__(self, timing: dict[str, float]) -> None:
        self.timing = timing
        self._t = time.monotonic()

    def start(self) -> None:
        self._t = time.monotonic()

    def _add(self, name: str) -> None:
        now = time.monotonic()
        self.timing[name] = self.timing.get(name, 0.0) + (now - self._t)
        self._t = now

    def after_epoch(self, stage, epoch: int, values: dict[str, float]) -> None:
        self._add(stage.name)

    def stop(self, name: str) -> None:
        self._add(name)


class SaveProgress(EpochHook):
    """The resumable state after the epoch: model, optimiser, the stage's extra state, earlier
    stages' outputs -- written atomically to ``path``."""

    def __init__(self, path: Path, round_no: int, ctx: RoundContext) -> None:
        self.path, self.round_no, self.ctx = path, round_no, ctx

    def after_epoch(self, stage, epoch: int, values: dict[str, float]) -> None:
        # The epoch's log values travel with it: a kill between this write and ws.log_epoch() would
        # otherwise leave a completed epoch missing from the log (resume re-logs it from here).
        save_checkpoint(
            self.path,
            {
                "format": PROGRESS_FORMAT,
                "round": self.round_no,
                "stage": stage.name,
                "epoch": epoch,
                "model": self.ctx.model.state_for_checkpoint(),
                "optimizer": stage.optimizer.state_dict(),
                "stage_state": stage.state_dict(),
                "outputs": outputs_to_state(self.ctx.outputs),
                "values": json.dumps(values, default=float),
                # seconds per part so far, and the round's whole active time ("_before" on resume)
                "timing": json.dumps({**self.ctx.timing, "_before": self.ctx.elapsed_s()}, default=float),
            },
        )


class LogEpoch(EpochHook):
    """The epoch's values in the workspace's epoch log; the round resumes after this epoch."""

    def __init__(self, ws, round_no: int) -> None:
        self.ws, self.round_no = ws, round_no

    def after_epoch(self, stage, epoch: int, values: dict[str, float]) -> None:
        self.ws.log_epoch(self.round_no, stage.name, epoch, values)
        self.ws.update_round(self.round_no, stage=stage.name, epoch=epoch + 1)


class RecordFailedImages(EpochHook):
    """Images that vanished or broke since ingest, found during the epoch: marked in the workspace."""

    def __init__(self, ws, ctx: RoundContext) -> None:
        self.ws, self.ctx = ws, ctx

    def after_epoch(self, stage, epoch: int, values: dict[str, float]) -> None:
        record_failed(self.ws, self.ctx)


def record_failed(ws, ctx: RoundContext) -> None:
    """Images that vanished or broke since ingest: marked, so later stages skip them."""
    if ctx.failed_ids:
        record_failed_images(ws, sorted(ctx.failed_ids), ctx.images, during="training")
        ctx.failed_ids.clear()


def outputs_to_state(outputs: dict[str, Any]) -> dict[str, Any]:
    """Stage outputs (``RoundContext.outputs``: arrays) as checkpoint tensors."""
    return {name: {k: torch.as_tensor(np.asarray(v)) for k, v in out.items()} for name, out in outputs.items()}


def outputs_from_state(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`outputs_to_state` undone."""
    return {name: {k: v.numpy() for k, v in out.items()} for name, out in state.items()}
