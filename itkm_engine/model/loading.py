"""Which model a workspace runs on: the device, the checkpoint, and the model built from it.

The query facade (``session.py``) and the trainer (``trainer.py``) are peers that both start here:
:func:`load_model` gives the model of the last finished round (or the seeded, untrained starting
model before the first round) extended to the workspace's current scenarios and groups, and
:func:`model_key` names its feature cache without building it.

Checkpoint *files* (atomic writes, safe loads, content keys) are :mod:`.checkpoint`; the network is
:mod:`.backbone`.  This module is the one that joins the two.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..devices import device_problem
from ..errors import ItkmError
from .backbone import ITKMModel, build_model
from .checkpoint import _short, check_model_state, checkpoint_key, load_checkpoint

__all__ = ["resolve_device", "seed_everything", "camera_vocabulary", "init_key", "model_key", "load_model",
           "model_from_state", "latest_round_checkpoint"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU.

    A named device this computer does not have (a workspace trained on a GPU, opened on a laptop:
    its config.toml says ``cuda``) is resolved like ``auto``: a stored device is a preference,
    never a reason to call a checkpoint damaged.  A device the user asks for now is checked
    before anything starts (``config_check.check_device_present``)."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto") or device_problem(name) is not None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (the starting model's random parts, and
    every epoch of the training loop)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def camera_vocabulary(ws) -> tuple[list[str], list[str]]:
    """Scenario and group names in use, in a stable order (the model's embedding rows)."""
    cams = ws.cameras()
    scenarios = sorted({c.scenario for c in cams})
    groups = sorted({c.group for c in cams})
    return scenarios, groups


def init_key(cfg: Config, scenarios: list[str], groups: list[str]) -> str:
    """Feature-cache key of the untrained starting model ("round 0")."""
    src = cfg.model.weights or cfg.model.pretrained or "random"
    h = hashlib.sha256(json.dumps([cfg.model.name, src, cfg.seed, list(cfg.model.image_size), cfg.model.feature,
                                   scenarios, groups]).encode()).hexdigest()[:12]
    return f"init-{cfg.model.name}-{h}"


def latest_round_checkpoint(ws) -> Path | None:
    """The checkpoint of the workspace's last finished round, or ``None`` before any round.

    Unlike ``ws.latest_checkpoint()`` (which skips to an older file) a finished round whose file
    is gone is an :class:`ItkmError` naming the file: queries, extraction, exports and the next
    round would otherwise silently use an older (or the untrained) model while ``status`` still
    lists the round."""
    done = [r for r in ws.rounds() if r.status == "done" and r.checkpoint]
    if not done:
        return None
    path = ws.resolve_path(done[-1].checkpoint)
    if not path.is_file():
        raise ItkmError(
            f"the checkpoint of round {done[-1].number}, {path}, is missing; put the file back (from a backup), "
            "or ingest the folders into a new workspace and train again. Nothing was computed with an older model.")
    return path


def model_key(ws, cfg: Config) -> str:
    """The feature-cache key :func:`load_model` would return for the workspace's current model,
    without building the model: a checkpoint's content hash (cached per file), else the key of
    the untrained starting model."""
    ckpt = latest_round_checkpoint(ws)
    if ckpt is not None:
        return checkpoint_key(ckpt)
    return init_key(cfg, *camera_vocabulary(ws))


def model_from_state(state: dict, path: str | os.PathLike, device: torch.device | str = "cpu") -> ITKMModel:
    """The ITKM model of a checkpoint's ``model`` entry, checked (:func:`check_model_state`) before
    it is built; weights that do not fit the architecture are an :class:`ItkmError` naming ``path``."""
    check_model_state(state, path)
    try:
        return ITKMModel.from_checkpoint(state, device=device)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise ItkmError(f"checkpoint {path} does not fit its own model (damaged or edited?): {_short(exc)}. "
                        "Use an earlier checkpoint, or train the round again (itkm train --restart-round).") from None


def load_model(ws, cfg: Config, device: torch.device, checkpoint: Path | None = None) -> tuple[ITKMModel, str]:
    """The model of ``checkpoint`` (default: the latest finished round), extended to the current
    cameras' scenarios and groups; or the initial model before any training.  Returns (model, key)."""
    scenarios, groups = camera_vocabulary(ws)
    ckpt = checkpoint if checkpoint is not None else latest_round_checkpoint(ws)
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location="cpu")
        model = model_from_state(state.get("model"), ckpt, device=device)
        model.extend(scenarios=scenarios, groups=groups)
        return model, checkpoint_key(ckpt)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, scenarios, groups, device=device)
    return model, init_key(cfg, scenarios, groups)
