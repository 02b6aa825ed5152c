"""Device names: which ones the engine understands, and whether this computer has the one named.

A device in a workspace's ``config.toml`` is a *preference*: a workspace trained on a GPU and
copied to a laptop loads on the CPU (:func:`itkm_engine.model.loading.resolve_device` falls back
to ``auto``).  A device the user asks for now (``--device cuda:7``, the app's device list) must be
there: the training entry point refuses it before anything is written (``config_check``).

Only a CUDA or MPS name imports torch (to ask the driver); ``auto`` and ``cpu`` cost nothing.
"""

from __future__ import annotations

import re

__all__ = ["DEVICE_NAME", "device_problem"]

#: The device names the engine understands.
DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


def device_problem(name) -> str | None:
    """Why device ``name`` cannot be used on this computer, or ``None`` when it can (``None``,
    ``auto`` and ``cpu`` always can).  ``name`` is a device name or a ``torch.device``."""
    text = str(name) if name is not None else "auto"
    if text in ("", "auto", "cpu"):
        return None
    import torch  # the driver knows which GPUs there are

    if text.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text.split(":", 1)[1]) if ":" in text else 0
        if index < count:
            return None
        if count == 0:
            return "this computer has no CUDA GPU (or no driver for it)"
        return f"this computer has {count} CUDA GPU{'s' if count > 1 else ''}: " + ", ".join(
            f"cuda:{i}" for i in range(count))
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "this computer has no Apple GPU (MPS)"
    return f"{text!r} is not a device; use auto, cpu, cuda or cuda:N"
