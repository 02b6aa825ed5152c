"""Rounds of ITKM training: Stage I -> Stage II -> Stage III, resumable per epoch.

A round starts from the last finished round's checkpoint (or the initial CLIP model for round 1),
so "retrain after new cameras arrive" is just another round.  The starting checkpoint's features
come from the on-disk cache: only images not yet embedded with it are embedded.

After every epoch the trainer writes ``checkpoints/progress.pt`` atomically (model, optimiser,
the stage's extra state, earlier stages' outputs) and logs the epoch in the workspace in the same
step, so a kill at any point loses at most the epoch in flight; running the same command again
continues from the last completed epoch.  A cancel request stops within one batch and leaves the
same resumable state.

This is the training *loop*.  The way into it -- settings resolved and checked, the model's
lineage, an interrupted round resumed or abandoned, config.toml written, out of memory explained
-- is :mod:`itkm_engine.train_request`, which the CLI, torchrun and the app's worker all call.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_open
from .config import Config
from .config_check import resumed_config
from .distributed import SINGLE, DistContext
from .errors import Cancelled, NothingToDoError, TrainingDivergedError
from .eta import format_duration, round_plan
from .features import extract_features
from .model.checkpoint import checkpoint_key, load_checkpoint, save_checkpoint
from .model.loading import camera_vocabulary, latest_round_checkpoint, load_model, model_from_state, resolve_device
from .progress import Reporter
from .records import RoundResult
from .stages.context import RoundContext
from .stages.heterogeneous import HeterogeneousStage
from .stages.hooks import (CheckFinite, EpochHook, LogEpoch, RecordFailedImages, SaveProgress, StageClock,
                           outputs_from_state, outputs_to_state, record_failed)
from .stages.homogeneous import HomogeneousStage
from .stages.loop import run_stage
from .stages.text import TextStage
from .vocabulary import FINAL_LABELS_FILE, PROGRESS_FILE, STAGE_LABELS
from .workspace.decisions import load_constraints

STAGES = (HomogeneousStage, TextStage, HeterogeneousStage)

#: A round's parts and their spans of its progress: the first extraction, the stages (their
#: STAGE_LABELS spans inside 0.05..0.95) and the new checkpoint's features.
ROUND_SPANS = {"extract": (0.0, 0.05), **{name: (round(0.05 + 0.9 * s.span[0], 9), round(0.05 + 0.9 * s.span[1], 9))
                                          for name, s in STAGE_LABELS.items()}, "final": (0.95, 1.0)}
#: ``ws.metrics(ROUND_TIME)``: per finished round, the seconds it ran ("seconds"), per part
#: ("parts"), its epochs per stage and its image count -- the next round's time-left basis.
ROUND_TIME = "round_time"


def train(ws, cfg: Config, *, rounds: int = 1, device=None, reporter: Reporter | None = None,
          dist: DistContext | None = None) -> list[RoundResult]:
    """Run ``rounds`` rounds (an interrupted round is finished first and counts as one).

    Under ``torchrun`` pass the process group's ``dist``: rank 0 holds the writable workspace and
    is the only one that writes; other ranks open it read-only.
    """
    dist = dist or SINGLE
    reporter = reporter or Reporter(job="train")
    device = resolve_device(device if device is not None else cfg.device)
    images = ws.images()
    if len(images) == 0:
        raise NothingToDoError("the workspace has no images yet: ingest camera folders first (itkm ingest)")
    reporter.plan(_time_plan(ws, cfg, rounds, len(images)))
    results = []
    for i in range(rounds):
        rep = reporter.child(i / rounds, (i + 1) / rounds)
        results.append(_run_round(ws, cfg, device, rep, dist))
    return results


def _time_plan(ws, cfg: Config, rounds: int, n_images: int):
    """The job's parts for the time-left estimate, costs from the last finished round's times."""
    history = None
    records = [m for m in ws.metrics(ROUND_TIME) if isinstance(m.get("values"), dict)]
    if records:
        history = records[-1]["values"]
    else:
        history = _history_from_epoch_log(ws)
    resumed = (ws.checkpoints_dir / PROGRESS_FILE).exists()
    epochs = {"stage1": cfg.stage1.epochs, "stage2": cfg.stage2.epochs, "stage3": cfg.stage3.epochs}
    return round_plan(rounds, epochs, ROUND_SPANS, history, n_images, resumed=resumed)


def _run_round(ws, cfg: Config, device: torch.device, reporter: Reporter, dist: DistContext) -> RoundResult:
    t0 = time.monotonic()
    timing: dict[str, float] = {}  # seconds per part; "_before": the time earlier runs spent on this round
    main = dist.main
    progress_path = ws.checkpoints_dir / PROGRESS_FILE
    resume = _resumable(ws, progress_path) if main else None
    if dist.broadcast_object(resume is not None) and not main:
        resume = load_checkpoint(progress_path, map_location="cpu")
    images = ws.images()
    if resume is not None:
        round_no = int(resume["round"])
        info = next(r for r in ws.rounds() if r.number == round_no)
        # the settings it started with, and the memory settings of this run (train_request says so)
        cfg, _, _ = resumed_config(info, cfg)
        cfg.device = str(device)
        model = model_from_state(resume.get("model"), progress_path, device=device)
        scenarios, groups = camera_vocabulary(ws)
        model.extend(scenarios=scenarios, groups=groups)
        base_fs = None
        reporter.log(f"resuming round {round_no} after {resume['stage']} epoch {int(resume['epoch']) + 1}")
        timing.update(_stored_timing(resume))
        done_at = (resume["stage"], int(resume["epoch"]))
        if "values" in resume and not any((e["stage"], e["epoch"]) == done_at for e in ws.epoch_log(round_no)):
            ws.log_epoch(round_no, *done_at, json.loads(resume["values"]))  # killed before it was logged
    else:
        base_ckpt = latest_round_checkpoint(ws)
        model, key = load_model(ws, cfg, device, base_ckpt)
        round_no = _start_or_restart_round(ws, cfg, base_ckpt, reporter) if main else None
        round_no = dist.broadcast_object(round_no)
        reporter.log(f"round {round_no}: starting from {base_ckpt.name if base_ckpt else 'the initial model'}")
        t_extract = time.monotonic()
        base_fs = extract_features(
            model, images, cache_dir=ws.features_dir / key, key=key, device=device,
            batch_size=cfg.data.extract_batch_size, workers=cfg.data.workers, amp=cfg.amp,
            reporter=reporter.child(*ROUND_SPANS["extract"], part="extract"), stage="extract", dist=dist,
        )
        timing["extract"] = time.monotonic() - t_extract
    ctx = RoundContext(cfg, model, images, device, round_no, base_features=base_fs, dist=dist,
                       camera_sites=ws.camera_sites())
    ctx.timing = timing
    ctx.elapsed_s = lambda: timing.get("_before", 0.0) + (time.monotonic() - t0)
    ctx.constraints = load_constraints(ws)  # must/cannot-links the round obeys (workspace/decisions.py)
    if resume is not None:
        ctx.outputs = outputs_from_state(resume.get("outputs", {}))

    check = CheckFinite(ctx.model, done_stage_of(resume) if resume is not None else "the round's start")
    clock = StageClock(timing)
    hooks: list[EpochHook] = [check, clock]
    if main:
        hooks += [SaveProgress(progress_path, round_no, ctx), LogEpoch(ws, round_no), RecordFailedImages(ws, ctx)]
    stage_order = [s.name for s in STAGES]
    done_stage = resume["stage"] if resume is not None else None
    done_epoch = int(resume["epoch"]) if resume is not None else -1
    try:
        for cls in STAGES:
            stage = cls(ctx)
            if done_stage is not None:
                di, si = stage_order.index(done_stage), stage_order.index(stage.name)
                if si < di or (si == di and done_epoch >= stage.epochs - 1):
                    continue  # finished before the interruption
                start = done_epoch + 1 if si == di else 0
                stage_resume = resume.get("stage_state") if si == di else None
            else:
                start, stage_resume = 0, None
            srep = reporter.child(*ROUND_SPANS[stage.name], part=stage.name)
            clock.start()
            stage.prepare(srep.child(0.0, 0.05), stage_resume)
            if resume is not None and stage_resume is not None and "optimizer" in resume:
                try:
                    stage.optimizer.load_state_dict(resume["optimizer"])
                except (ValueError, KeyError):
                    reporter.warning("optimiser state did not fit; continuing with a fresh optimiser")
            if main:
                ws.update_round(round_no, status="running", stage=stage.name, epoch=start)
            run_stage(stage, start_epoch=start, seed=cfg.seed, round_no=round_no, device=device, amp=cfg.amp,
                      reporter=srep.child(0.05, 1.0), hooks=hooks)
            stage.publish()
            clock.stop(stage.name)
            done_stage = None
    except TrainingDivergedError as exc:
        if main:
            ws.update_round(round_no, status="cancelled")
        raise TrainingDivergedError(
            f"round {round_no} stopped: {exc}. Nothing of that epoch was kept: the round is rolled back to "
            f"after {check.last_good} (the last good epoch). Lower the learning rate and start the round again, "
            f"e.g. itkm train WORKSPACE --restart-round --set {exc_stage(exc)}.lr=..."
        ) from None
    except Cancelled:
        if main:
            ws.update_round(round_no, status="cancelled")
            record_failed(ws, ctx)
        reporter.log(f"round {round_no} cancelled; run training again to resume from the last completed epoch")
        raise

    ckpt = ws.checkpoints_dir / f"round_{round_no:04d}.pt"
    if main:
        save_checkpoint(ckpt, _final_state(round_no, cfg, ctx))
        _save_final_labels(ws, round_no, ctx)
        ws.update_round(round_no, status="done", checkpoint=str(ckpt), finished=time.time())
        progress_path.unlink(missing_ok=True)
        record_failed(ws, ctx)
    dist.barrier()
    # Features of the new checkpoint, cached: the gallery, UMAP and identities need them next, and
    # the next round (e.g. after new cameras) then embeds only images it has not seen.
    key = checkpoint_key(ckpt)
    t_final = time.monotonic()
    final_images = ws.images()
    extract_features(
        ctx.model, final_images, cache_dir=ws.features_dir / key, key=key, device=device,
        batch_size=cfg.data.extract_batch_size, workers=cfg.data.workers, amp=cfg.amp,
        reporter=reporter.child(*ROUND_SPANS["final"], part="final"), stage="extract", dist=dist, stem=ctx.stem,
    )
    timing["final"] = time.monotonic() - t_final
    seconds = ctx.elapsed_s()
    if main:
        # the one duration of the round: the log line below, `itkm train`'s summary and the app's
        # Rounds table all show this number (and the next round's time left starts from its parts)
        ws.save_metrics(ROUND_TIME, round_no, str(ckpt), {
            "seconds": seconds, "parts": {k: v for k, v in timing.items() if not k.startswith("_")},
            "epochs": {"stage1": cfg.stage1.epochs, "stage2": cfg.stage2.epochs, "stage3": cfg.stage3.epochs},
            "images": len(final_images)})
    reporter.update(1.0, stage="done", round=round_no, message=f"round {round_no} done")
    reporter.log(f"round {round_no} done in {format_duration(seconds)}")
    return RoundResult(round_no, ckpt, seconds, ws.epoch_log(round_no))


def _history_from_epoch_log(ws) -> dict | None:
    """A round trained before durations were recorded: each stage's seconds from its epochs' end
    times (the first stage's from the round's start), when the round ran without a pause."""
    done = [r for r in ws.rounds() if r.status == "done"]
    if not done:
        return None
    last = done[-1]
    log = ws.epoch_log(last.number)
    parts: dict[str, float] = {}
    epochs: dict[str, int] = {}
    t = last.started
    for row in log:
        end = row.get("finished")
        secs = float(row.get("values", {}).get("seconds") or 0.0)
        if not end or end < t or end - t > 3 * secs + 600:  # a pause (stopped, resumed later): no basis
            return None
        parts[row["stage"]] = parts.get(row["stage"], 0.0) + (end - t)
        epochs[row["stage"]] = epochs.get(row["stage"], 0) + 1
        t = end
    return {"parts": parts, "epochs": epochs, "images": ws.image_count()} if parts else None


def _stored_timing(resume: dict) -> dict[str, float]:
    """The parts' seconds an interrupted round had spent up to its last saved epoch."""
    try:
        stored = json.loads(resume.get("timing") or "{}")
    except (TypeError, ValueError):
        return {}
    return {str(k): float(v) for k, v in stored.items() if isinstance(v, (int, float)) and v >= 0}


def done_stage_of(resume: dict) -> str:
    return f"{resume['stage']} epoch {int(resume['epoch']) + 1}"


def exc_stage(exc: Exception) -> str:
    text = str(exc)
    return next((s.name for s in STAGES if text.startswith(s.name)), "stage1")


def _start_or_restart_round(ws, cfg: Config, base_ckpt: Path | None, reporter: Reporter) -> int:
    """A new round's number -- or the last round's, when it is still ``running`` although no
    process runs it (we hold the writer lock) and it left no progress file: it was killed before
    its first epoch completed, so it starts again under its own number instead of staying
    'running' forever beside a new one."""
    rounds = ws.rounds()
    config_json = json.dumps(cfg.to_dict())
    base = str(base_ckpt) if base_ckpt else None
    if rounds and rounds[-1].status in ("running", "cancelled"):
        # stopped (Stop in the app, Ctrl-C) or killed before its first epoch was saved: "Resume
        # round N" starts round N again instead of a round N+1 beside a cancelled N
        number = rounds[-1].number
        with ws.transaction() as con:  # epochs it may have logged belong to no saved state any more
            con.execute("DELETE FROM epochs WHERE round = ?", (number,))
        ws.update_round(number, status="running", stage=None, epoch=None, config_json=config_json,
                        base_checkpoint=base)
        reporter.log(f"round {number} was stopped before its first epoch completed; starting it again")
        return number
    return ws.start_round(config_json, base)


def _resumable(ws, progress_path: Path) -> dict | None:
    """The saved progress of an unfinished round, if any."""
    if not progress_path.exists():
        return None
    state = load_checkpoint(progress_path, map_location="cpu")
    rounds = {r.number: r for r in ws.rounds()}
    r = rounds.get(int(state.get("round", -1)))
    if r is None or r.status == "done":
        progress_path.unlink(missing_ok=True)
        return None
    return state


def _final_state(round_no: int, cfg: Config, ctx: RoundContext) -> dict:
    return {
        "format": "itkm-checkpoint-v1",
        "round": round_no,
        "config": json.dumps(cfg.to_dict()),
        "model": ctx.model.state_for_checkpoint(),
        "outputs": outputs_to_state(ctx.outputs),
    }


def _save_final_labels(ws, round_no: int, ctx: RoundContext) -> None:
    """The round's pseudo-labels are its *final* ones: Stage III's cross-group labels (matched
    clusters share one), stored as the round's assignments; ``rounds/round_NNNN/final_labels.npz``
    keeps them beside the per-group labels they came from, so the final identities can merge the
    clusters CHM matched (:func:`itkm_engine.identities.round_links`).  A round without Stage III
    output (e.g. zero Stage III epochs) stores Stage II's clusters, as before."""
    st = ctx.outputs.get("stage3")
    if st is not None and "cross" in st:
        ids, labels, cross = st["ids"], st["labels"], st["cross"]
    elif "stage2" in ctx.outputs:
        ids, labels = ctx.outputs["stage2"]["ids"], ctx.outputs["stage2"]["labels"]
        cross = labels
    else:
        return
    folder = ws.round_dir(round_no)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_open(folder / FINAL_LABELS_FILE, "wb") as fh:
        np.savez(fh, ids=np.asarray(ids, np.int64), labels=np.asarray(labels, np.int64),
                 cross=np.asarray(cross, np.int64))
    ws.save_assignments(round_no, ids, cross)
