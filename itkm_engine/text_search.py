"""Whether a model can search by description ("a person in a red jacket"), and why not.

Text search ranks images by the cosine between their projected features and CLIP's text encoding
of the description.  That means something only when the text tower carries CLIP's pretrained
weights: the quick preset's small text tower is random (no CLIP weights ship with a pip install),
and measured on the demo its top 50 for "a person in a red jacket" held no red torsos at all
(random images: 2%), "a dog" scored higher than "red jacket", and "qwertyuiop zxcv" returned 50
people.  So text search is off where the text tower has no pretrained weights -- in the app and in
``itkm query --text`` -- and says so in one sentence; where it has them it works as before.

Decided from the model's settings (no torch import: the app asks on its GUI thread): the image
towers that load CLIP's weights (``ImageTower.uses_clip_weights``: the ViT tower) load its text
tower with them; the other towers' CLIP is built from the config alone, random.  A checkpoint
records the answer as ``text_pretrained`` (``model/backbone.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass

from .errors import ItkmError

__all__ = ["TextSearchUnavailable", "CLIP_WEIGHT_TOWERS", "text_tower_pretrained", "unavailable_reason",
           "workspace_reason", "OFF_SENTENCE", "HOW_CLI", "HOW_APP"]

#: ``ModelConfig.tower`` values whose model loads CLIP's pretrained weights, text tower included.
CLIP_WEIGHT_TOWERS = ("clip",)

#: The one sentence the app and the CLI show when text search is off.
OFF_SENTENCE = ("Text search is off: this model's CLIP text tower has no pretrained weights ({why}), so a "
                "description would rank the images at random; to search by description, {how}.")
HOW_CLI = ("train a workspace with --preset full (ViT-B-16 with OpenAI's CLIP weights: downloaded once, or a "
           "local file given with --weights PATH)")
HOW_APP = ("train a workspace with the Full preset (ViT-B-16 with OpenAI's CLIP weights, downloaded once; "
           "itkm train --preset full --weights PATH takes a local file)")


class TextSearchUnavailable(ItkmError):
    """A description was to be searched with a model whose text tower is random."""


def _as_dict(model_cfg) -> dict:
    if model_cfg is None:
        return {}
    if is_dataclass(model_cfg):
        return asdict(model_cfg)
    return dict(model_cfg)


def text_tower_pretrained(model_cfg) -> bool:
    """True when a model built from ``model_cfg`` (a ``ModelConfig`` or its dict) has CLIP's
    pretrained text tower."""
    d = _as_dict(model_cfg)
    return d.get("tower", "clip") in CLIP_WEIGHT_TOWERS and bool(d.get("weights") or d.get("pretrained"))


def unavailable_reason(model_cfg, preset: str | None = None, *, app: bool = False) -> str | None:
    """``None`` when text search works with this model, else the sentence that says why not (and
    how to get it: worded for the command line, or with ``app`` for the desktop app)."""
    if text_tower_pretrained(model_cfg):
        return None
    d = _as_dict(model_cfg)
    if d.get("tower") not in CLIP_WEIGHT_TOWERS:
        why = f"the {preset} preset's is random" if preset else "its image tower is not CLIP's, its text tower random"
    else:
        why = f"the {preset} preset starts from random weights" if preset else "it starts from random weights"
    return OFF_SENTENCE.format(why=why, how=HOW_APP if app else HOW_CLI)


def workspace_reason(rounds, cfg, *, app: bool = False) -> str | None:
    """:func:`unavailable_reason` for the model a workspace serves: the last finished round's
    (its stored settings), else the untrained model of ``cfg`` (a ``Config``)."""
    done = [r for r in rounds if r.status == "done" and r.config_json]
    if done:
        try:
            stored = json.loads(done[-1].config_json)
            return unavailable_reason(stored.get("model", {}), stored.get("preset"), app=app)
        except (ValueError, AttributeError, TypeError):
            pass
    return unavailable_reason(getattr(cfg, "model", None), getattr(cfg, "preset", None), app=app)
