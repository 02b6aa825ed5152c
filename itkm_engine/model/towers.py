"""The image towers by name: ``ModelConfig.tower`` -> its class, the one list of towers.

Everything that needs to know which towers exist asks here: the model builds the one a config
names (:func:`tower_class`), a checkpoint naming another is refused (``checkpoint.py``), and the
config checks take the choices and each tower's own settings' ranges from the classes
(``config_check.py``).  A new tower is a file beside the two below (an
:class:`~.image_tower.ImageTower`) plus one row here.
"""

from __future__ import annotations

from ..errors import ItkmError
from .clip_vit_tower import ClipViTTower
from .image_tower import ImageTower
from .mobilenet_tower import MobileNetV2Tower

__all__ = ["TOWERS", "tower_class"]

#: ``ModelConfig.tower`` value -> the image tower class.
TOWERS: dict[str, type[ImageTower]] = {
    "clip": ClipViTTower,  # open_clip's ViT: the paper's setting (GPU, ``full``)
    "mobilenetv2": MobileNetV2Tower,  # ImageNet MobileNetV2 from a pip wheel (CPU, ``quick``)
}


def tower_class(name: str) -> type[ImageTower]:
    """The class of tower ``name``; an unknown name is an :class:`ItkmError` listing the known ones."""
    try:
        return TOWERS[name]
    except (KeyError, TypeError):
        raise ItkmError(f"model.tower must be one of {', '.join(TOWERS)}, got {name!r}") from None
