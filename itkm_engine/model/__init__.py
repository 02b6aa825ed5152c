"""The ITKM model on open_clip: backbone (scenario embedding, group stems), learned prompts
through the frozen text transformer, weights resolution and safe checkpoints.

The names below load on first use (PEP 562): importing a torch-free part of this package (the
tower table, :mod:`.towers`, which the config checks read) must not import torch, so a bad
``--set`` is refused in a fraction of a second instead of after torch's import."""

from __future__ import annotations

import importlib

__all__ = [
    "ImageOutput",
    "ITKMModel",
    "build_model",
    "PromptLearner",
    "default_template",
    "create_clip",
    "register_configs",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_key",
]

#: exported name -> the module of this package that defines it
_WHERE = {"ImageOutput": "backbone", "ITKMModel": "backbone", "build_model": "backbone",
          "PromptLearner": "prompts", "default_template": "prompts", "create_clip": "weights",
          "register_configs": "weights", "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
          "checkpoint_key": "checkpoint"}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
