"""The one way into training: a :class:`TrainRequest` and :func:`run_training`.

Training starts in three places -- ``itkm train``, ``torchrun ... -m itkm_engine.train`` and the
app's worker process (``worker.job_train``) -- and all three call :func:`run_training` with a
request that says what the user asked for, and nothing more:

* the settings: ``config_file`` (a TOML file), else ``preset``, else the workspace's saved
  ``config.toml``, else ``quick``; then ``weights``, ``device`` and the ``--set KEY=VALUE`` items;
* ``rounds`` to run, and ``restart_round`` (abandon an interrupted round instead of resuming it).

:func:`plan_training` turns a request into the run's settings, in this order, and writes nothing
until every check has passed:

1. what needs neither the workspace nor torch (:func:`check_request`): the preset's name, the
   config file, every ``--set`` key and value, the device's name -- and whether that device is on
   this computer (``--device cuda:7`` on a laptop is refused; only a CUDA/MPS name imports torch);
2. the settings resolved against the workspace's ``config.toml`` and validated as a whole;
3. the model's lineage (``config_check.lineage_problem``): a workspace trained with one model is
   never continued with another (``full`` on a ``quick`` workspace, a preset chosen in the app);
4. the interrupted round: it resumes with the settings it started with (and this run's memory
   settings, so a round that ran out of memory continues with a smaller batch), or, with
   ``restart_round``, it is abandoned;
5. only then ``config.toml`` is written: the settings the *next new* round uses.

A device stored in ``config.toml`` is a preference: a workspace trained on a GPU and copied to a
laptop trains (and loads) on the CPU, with a note.  Out of memory during training is one
:class:`~itkm_engine.errors.NotEnoughMemoryError` naming the setting to lower; the round is left
``cancelled`` and resumes.  See ``docs/adr/0012-one-training-entry-point-and-the-apps-writer-lock.md``.

Torch is imported only to train (and to ask for a CUDA/MPS device): a refused request answers
in a fraction of a second.  Like the CLI, this module imports the trainer inside the function
that trains, for that reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_text
from .config import PRESETS, Config, preset
from .config_check import (ConfigError, apply_sets, check_device_present, check_lineage, load_config_file,
                           resumed_config, validate_config)
from .devices import device_problem
from .errors import ItkmError, NotEnoughMemoryError, is_out_of_memory
from .progress import Reporter
from .vocabulary import CONFIG_FILE, PROGRESS_FILE

if TYPE_CHECKING:  # imports torch
    from .distributed import DistContext

__all__ = ["TrainRequest", "TrainPlan", "check_request", "resolve_config", "plan_training", "run_training",
           "interrupted_round", "abandon_interrupted_round"]


@dataclass(frozen=True)
class TrainRequest:
    """What the user asked for; every field left out means "the workspace's saved setting"."""

    preset: str | None = None  # a preset's name (--preset, the app's preset list)
    config_file: str | None = None  # a TOML config file (--config); wins over preset
    sets: tuple[str, ...] = ()  # KEY=VALUE items (--set), applied last
    device: str | None = None  # --device, the app's device list; must be on this computer
    weights: str | None = None  # --weights: a local open_clip checkpoint file or folder
    rounds: int = 1
    restart_round: bool = False  # abandon an interrupted round instead of resuming it

    @property
    def keeps_saved_settings(self) -> bool:
        """Whether the saved config.toml is the base (no preset or config file asked for)."""
        return self.preset is None and self.config_file is None

    def to_json(self) -> dict[str, Any]:
        """Plain values for the worker's request line (``child_job``)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainRequest":
        if not isinstance(data, dict):
            raise ItkmError(f"a training request must be a table of settings, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ItkmError(f"unknown training request field(s): {', '.join(sorted(unknown))} (a newer ITKM Studio?)")
        values = dict(data)
        values["sets"] = tuple(str(s) for s in values.get("sets") or ())
        return cls(**values)

    @classmethod
    def from_args(cls, a) -> "TrainRequest":
        """The request of ``itkm train`` / ``python -m itkm_engine.train`` options."""
        return cls(preset=a.preset, config_file=a.config, sets=tuple(a.set or ()), device=a.device,
                   weights=a.weights, rounds=a.rounds, restart_round=bool(a.restart_round))


@dataclass
class TrainPlan:
    """What :func:`run_training` will do: ``config`` is written to config.toml (the next new
    round's settings); an ``interrupted`` round resumes first with ``resume_config``."""

    config: Config
    interrupted: Any = None  # RoundInfo of the round that resumes, or None
    resume_config: Config | None = None
    notes: list[str] = field(default_factory=list)  # said to the user before training starts
    warnings: list[str] = field(default_factory=list)


# -- 1. cheap checks: no workspace, no torch (unless a CUDA/MPS device is named) --------------------
def check_request(req: TrainRequest) -> None:
    """Refuse what is wrong with the request itself (:class:`ConfigError` naming the option or
    key), before the workspace is opened and before torch is imported."""
    if isinstance(req.rounds, bool) or not isinstance(req.rounds, int) or req.rounds < 1:
        raise ConfigError(f"--rounds must be 1 or more, got {req.rounds!r}")
    if req.preset is not None and req.preset not in PRESETS:
        raise ConfigError(f"--preset {req.preset!r} is not a preset; choose one of: {', '.join(PRESETS)}")
    if req.weights is not None and not str(req.weights).strip():
        raise ConfigError("--weights is empty; name a local open_clip checkpoint file or folder")
    base = load_config_file(req.config_file) if req.config_file else preset(req.preset or "quick")
    # every --set key and value, on the base it will most likely meet (the workspace's own saved
    # file is checked again with them in resolve_config)
    apply_sets(validate_config(base), list(req.sets))
    check_device_present(req.device)


# -- 2. the settings, resolved against the workspace ----------------------------------------------
def resolve_config(workspace: str | Path, req: TrainRequest) -> Config:
    """The run's settings: ``config_file``, else ``preset``, else the workspace's config.toml, else
    ``quick``; then weights, device and the ``--set`` items; validated as a whole.  Reads only
    config.toml (no database, no torch): the app resolves its request with it on its GUI thread."""
    saved = Path(workspace) / CONFIG_FILE
    if req.config_file:
        cfg = load_config_file(req.config_file)
    elif req.preset:
        cfg = preset(req.preset)
    elif saved.exists():
        cfg = load_config_file(saved)
    else:
        cfg = preset("quick")
    if req.weights:
        cfg.model = replace(cfg.model, weights=req.weights)
    if req.device:
        cfg.device = req.device
    return apply_sets(validate_config(cfg), list(req.sets))


# -- 3-5. lineage, the interrupted round, config.toml ---------------------------------------------
def interrupted_round(ws):
    """The unfinished round the next training resumes (its saved progress is there), or None."""
    rounds = ws.rounds()
    if rounds and rounds[-1].status in ("running", "cancelled") and (ws.checkpoints_dir / PROGRESS_FILE).exists():
        return rounds[-1]
    return None


def abandon_interrupted_round(ws, reporter: Reporter | None = None) -> int | None:
    """``--restart-round``: drop an unfinished round's saved progress and mark it ``failed``, so
    the next training starts a new round with the settings given now.  Returns the abandoned
    round's number (None when there was none)."""
    reporter = reporter or Reporter()
    unfinished = [r for r in ws.rounds() if r.status in ("running", "cancelled")]
    (ws.checkpoints_dir / PROGRESS_FILE).unlink(missing_ok=True)
    if not unfinished:
        reporter.log("no interrupted round to abandon; starting a new round")
        return None
    for r in unfinished:
        ws.update_round(r.number, status="failed")
    reporter.log(f"round {unfinished[-1].number} abandoned (its saved progress was dropped); starting a new round")
    return unfinished[-1].number


def plan_training(ws, req: TrainRequest, reporter: Reporter | None = None, *, write: bool = True) -> TrainPlan:
    """Check ``req`` against the workspace ``ws`` and prepare the run (see the module docstring).

    Raises :class:`ConfigError` (naming the key, the device, or the model's lineage) with nothing
    written.  ``write=False`` only checks (and plans): nothing is abandoned, config.toml is left."""
    reporter = reporter or Reporter(job="train")
    check_request(req)
    cfg = resolve_config(ws.path, req)
    check_lineage(ws, cfg, ignore_unfinished=req.restart_round)
    plan = TrainPlan(cfg)
    if req.device is None:
        why = device_problem(cfg.device)
        if why is not None:
            plan.notes.append(f"config.toml asks for device {cfg.device!r}, but {why}: training on "
                              "the CPU (a stored device is a preference; --device chooses another)")
    if not req.restart_round:
        info = interrupted_round(ws)
        if info is not None:
            plan.interrupted = info
            plan.resume_config, lowered, ignored = resumed_config(info, cfg)
            if lowered:
                plan.notes.append(f"round {info.number} continues with this run's memory settings: {'; '.join(lowered)}")
            if ignored:
                plan.warnings.append(f"round {info.number} continues with the settings it started with; the new ones "
                                     "apply from the next round (to use them now, abandon it: itkm train WORKSPACE "
                                     "--restart-round ...)")
    if write:
        if req.restart_round:
            abandon_interrupted_round(ws, reporter)
        atomic_write_text(ws.path / CONFIG_FILE, cfg.to_toml())
    return plan


def run_training(ws, req: TrainRequest, *, reporter: Reporter | None = None, dist: DistContext | None = None,
                 device=None) -> list:
    """Plan (:func:`plan_training`), then train ``req.rounds`` rounds; returns their ``RoundResult`` s.

    Under torchrun pass the process group's ``dist`` and each rank's ``device``: rank 0 (the
    workspace's writer) plans and writes; the other ranks (read-only) receive its settings or its
    refusal.  Out of memory is one :class:`NotEnoughMemoryError` naming the setting to lower, with
    the round marked ``cancelled`` (it resumes)."""
    reporter = reporter or Reporter(job="train")
    main = dist is None or dist.main
    if main:
        try:
            plan = plan_training(ws, req, reporter)
        except ItkmError as exc:
            if dist is not None:
                dist.broadcast_object({"error": str(exc)})
            raise
        if dist is not None:
            dist.broadcast_object({"config": plan.config.to_dict()})
        for line in plan.notes:
            reporter.log(line)
        for line in plan.warnings:
            reporter.warning(line)
        cfg = plan.config
    else:
        shared = dist.broadcast_object(None)
        if "error" in shared:
            raise ConfigError(shared["error"])
        cfg = Config.from_dict(shared["config"])
    from .trainer import train  # torch: only now that the request is accepted

    run_device = device if device is not None else cfg.device
    try:
        return train(ws, cfg, rounds=req.rounds, device=run_device, reporter=reporter, dist=dist)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        raise _out_of_memory(ws, cfg, run_device, exc, dist) from exc


def _out_of_memory(ws, cfg: Config, device, exc: BaseException, dist: DistContext | None) -> NotEnoughMemoryError:
    """One message for a round that ran out of memory: where, which setting to lower, and that
    the round resumes (it is marked ``cancelled``, not left ``running``)."""
    rounds = ws.rounds()
    last = rounds[-1] if rounds else None
    running = last is not None and last.status == "running"
    where = (last.stage or "extract") if running else "extract"
    if running and (dist is None or dist.main):
        ws.update_round(last.number, status="cancelled")
    if where == "stage2":
        setting = f"stage2.batch_size (now {cfg.stage2.batch_size})"
        example = f"--set stage2.batch_size={max(1, cfg.stage2.batch_size // 2)}"
    elif where in ("stage1", "stage3"):
        setting = (f"the batch, data.num_identities x data.num_instances (now {cfg.data.num_identities} x "
                   f"{cfg.data.num_instances})")
        example = f"--set data.num_identities={max(2, cfg.data.num_identities // 2)}"
    else:
        setting = f"data.extract_batch_size (now {cfg.data.extract_batch_size})"
        example = f"--set data.extract_batch_size={max(1, cfg.data.extract_batch_size // 2)}"
    what = " ".join(str(exc).split())[:160] or type(exc).__name__
    kind = str(getattr(device, "type", device) or "auto").split(":")[0]
    if kind == "auto" or device_problem(device) is not None:  # what the trainer resolved it to
        import torch

        kind = "cuda" if torch.cuda.is_available() else "cpu"
    on = f"the {kind.upper()}" if kind != "cpu" else "the computer"
    if running:
        after = (f"round {last.number} stopped in {where} and is kept: lower {setting} and start training again "
                 f"(itkm train WORKSPACE {example}) -- the round resumes after its last completed epoch with the "
                 "smaller batch")
    else:
        after = f"lower {setting} and start training again (itkm train WORKSPACE {example})"
    return NotEnoughMemoryError(f"{on} ran out of memory ({what}); {after}. Closing other programs also helps.")
