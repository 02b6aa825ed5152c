"""The one epoch loop every stage runs through.

A stage is a *strategy* (:class:`Stage`): it says what an epoch starts with (fresh pseudo-labels,
a sampler), what one batch's loss terms are, what to update after a step, and what to record at
the end of an epoch.  :func:`run_stage` owns everything else -- seeding, the optimiser step,
warm-up, cancellation, progress, loss averaging -- and runs the epoch-end hooks it is given (the
trainer's: check the weights, write the per-epoch checkpoint, log the epoch; :mod:`.hooks`), so
there is exactly one training loop in the code base.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import torch

from ..errors import TrainingDivergedError
from ..features import autocast
from ..model.loading import seed_everything
from ..progress import Reporter
from .hooks import EpochHook

#: How often (in steps) loss values are pulled to the host for progress events.  Between those
#: steps the loop never synchronises with the device.
LOG_EVERY = 10


@dataclass
class EpochPlan:
    """What :meth:`Stage.begin_epoch` hands the loop."""

    batches: Iterable[Any]
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. cluster counts, known before training


class Stage(Protocol):
    """What every stage implements; the trainer and the loop call nothing else (a step a stage
    does not need is a no-op there)."""

    name: str  # "stage1" | "stage2" | "stage3"
    epochs: int
    warmup_epochs: int
    optimizer: torch.optim.Optimizer

    def prepare(self, reporter: Reporter, resume: dict[str, Any] | None) -> None:
        """Before the first epoch run (also when resuming): what the epochs share.  ``resume`` is
        this stage's :meth:`state_dict` from the progress file when the stage continues, else None."""

    def begin_epoch(self, epoch: int, reporter: Reporter) -> EpochPlan: ...

    def losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch; the loop back-propagates their sum."""

    def after_backward(self) -> None:
        """Between the backward pass and the optimiser step (gradient all-reduce for modules
        outside DDP)."""

    def after_step(self) -> None:
        """Non-gradient updates after the optimiser step (memories)."""

    def end_epoch(self, epoch: int, reporter: Reporter) -> dict[str, float]: ...

    def publish(self) -> None:
        """After the stage's epochs: make sure its outputs are in ``ctx.outputs`` for the later
        stages (a stage that hands them over at its last epoch, so that epoch's saved progress
        carries them, has nothing left to do here)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra state (beyond model and optimiser) needed to resume after this epoch; handed back
        to :meth:`prepare`."""


def epoch_seed(seed: int, round_no: int, stage: str, epoch: int) -> int:
    """A seed that depends only on where we are, so a resumed epoch equals the original."""
    h = hashlib.sha256(f"{seed}/{round_no}/{stage}/{epoch}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def warmup_factor(epoch: int, step: int, steps: int, warmup_epochs: int, epochs: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 10% -- per step."""
    t = epoch + step / max(steps, 1)
    if warmup_epochs > 0 and t < warmup_epochs:
        return 0.1 + 0.9 * t / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-9)
    progress = min(max((t - warmup_epochs) / span, 0.0), 1.0)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def check_finite(losses: dict[str, float], stage: str, epoch: int, step: int) -> None:
    """Stop a diverged stage: a NaN/inf loss term means the weights are no longer trustworthy."""
    bad = [k for k, v in losses.items() if not math.isfinite(v)]
    if bad:
        raise TrainingDivergedError(f"{stage} epoch {epoch + 1} step {step + 1}: the loss became NaN or infinite "
                                    f"({', '.join(bad)})")


def run_stage(
    stage: Stage,
    *,
    start_epoch: int,
    seed: int,
    round_no: int,
    device: torch.device,
    amp: bool,
    reporter: Reporter,
    hooks: Sequence[EpochHook] = (),
) -> None:
    """Run ``stage`` from ``start_epoch`` to its last epoch.

    After each completed epoch every hook's ``after_epoch(stage, epoch, values)`` runs, in order,
    with the averaged loss terms and the stage's metrics (the trainer's hooks check the weights,
    write the resumable checkpoint and log the epoch: :mod:`.hooks`).
    """
    opt = stage.optimizer
    # The schedule scales each group's *initial* lr.  It is kept in the group itself, so it travels
    # with the optimiser state through a checkpoint (the live "lr" there is already scaled).
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    base_lrs = [g["initial_lr"] for g in opt.param_groups]
    for epoch in range(start_epoch, stage.epochs):
        seed_everything(epoch_seed(seed, round_no, stage.name, epoch))
        cpu0 = time.process_time()
        ep_rep = reporter.child(epoch / stage.epochs, (epoch + 1) / stage.epochs)
        plan = stage.begin_epoch(epoch, ep_rep.child(0.0, 0.3))
        train_rep = ep_rep.child(0.3, 1.0)
        sums: dict[str, torch.Tensor] = {}
        n = 0
        t0 = time.monotonic()
        for step, batch in enumerate(plan.batches):
            reporter.check()
            f = warmup_factor(epoch, step, plan.steps, stage.warmup_epochs, stage.epochs)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * f
            with autocast(device, amp):
                terms = stage.losses(batch)
            if not terms:
                continue
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                stage.after_backward()
                opt.step()
            stage.after_step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            n += 1
            if step % LOG_EVERY == 0 or step == plan.steps - 1:
                losses = {k: float(v) / n for k, v in sums.items()}  # host sync, every LOG_EVERY steps only
                check_finite(losses, stage.name, epoch, step)
                rate = (step + 1) / max(time.monotonic() - t0, 1e-6)
                train_rep.update(
                    (step + 1) / max(plan.steps, 1),
                    stage=stage.name,
                    round=round_no,
                    epoch=epoch,
                    epochs=stage.epochs,
                    step=step + 1,
                    steps=plan.steps,
                    losses=losses,
                    metrics=plan.metrics,
                    message=f"{rate:.1f} steps/s",
                )
        values = {k: float(v) / max(n, 1) for k, v in sums.items()}
        check_finite(values, stage.name, epoch, max(n - 1, 0))
        if sums:
            values["loss"] = sum(values.values())
        values.update(plan.metrics)
        values.update(stage.end_epoch(epoch, ep_rep))
        values["steps"] = n
        values["seconds"] = time.monotonic() - t0
        values["cpu_seconds"] = time.process_time() - cpu0  # the whole epoch: its features, clusters and steps
        for hook in hooks:
            hook.after_epoch(stage, epoch, values)
        ep_rep.update(1.0, stage=stage.name, round=round_no, epoch=epoch, epochs=stage.epochs,
                      losses={k: v for k, v in values.items() if k in sums}, metrics=values,
                      message=f"{stage.name} epoch {epoch + 1}/{stage.epochs} done")
