"""The image towers by name: ``ModelConfig.tower`` -> its class, the one list of towers.

Everything that needs to know which towers exist asks here: the model builds the one a config
names (:func:`tower_class`), a checkpoint naming another is refused (``checkpoint.py``), and the
config checks take the choices and each tower's own settings' ranges from this table
(``config_check.py``, without importing torch).  A new tower is a file beside the two below (an
:class:`~.image_tower.ImageTower`) plus one row here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple

from ..errors import ItkmError

if TYPE_CHECKING:  # the classes import torch: loaded by tower_class, on first use
    from .image_tower import ImageTower

__all__ = ["TOWERS", "Tower", "tower_class"]


class Tower(NamedTuple):
    """One image tower: the module of this package holding its class, the class's name, and the
    checks of the tower's own settings (``ModelConfig`` field -> inclusive (lo, hi), rows of
    ``config_check.RANGES`` as ``model.<field>``).  Declared here, not on the class, so that
    checking a config imports no torch (a bad ``--set`` is refused at once)."""

    module: str
    cls: str
    config_ranges: dict[str, tuple[float, float]]


#: ``ModelConfig.tower`` value -> the image tower.
TOWERS: dict[str, Tower] = {
    "clip": Tower("clip_vit_tower", "ClipViTTower", {}),  # open_clip's ViT: the paper's setting (GPU, ``full``)
    # ImageNet MobileNetV2 from a pip wheel (CPU, ``quick``); 19 blocks: at least one stays
    # frozen, and one stays trainable after the group stem.
    "mobilenetv2": Tower("mobilenet_tower", "MobileNetV2Tower", {"frozen_blocks": (1, 17)}),
}


def tower_class(name: str) -> type[ImageTower]:
    """The class of tower ``name`` (imports it, and torch, on first use); an unknown name is an
    :class:`ItkmError` listing the known ones."""
    try:
        tower = TOWERS[name]
    except (KeyError, TypeError):
        raise ItkmError(f"model.tower must be one of {', '.join(TOWERS)}, got {name!r}") from None
    return getattr(importlib.import_module(f".{tower.module}", __package__), tower.cls)
