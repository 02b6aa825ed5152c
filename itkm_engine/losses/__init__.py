"""Training losses of the three ITKM stages (DESIGN.md section 2).

- :mod:`.image_text` -- Stage II supervised image<->text contrast (CLIP-ReID stage 1) and the
  Stage III image-to-text cross-entropy against per-cluster text anchors.
- :mod:`.separation` -- Stage II multi-scenario separation hinge on cluster text features.
- :mod:`.instance` -- Stage III InfoNCE on reliable cross-group instance pairs (IHM).

The cluster-memory loss of Stages I and III lives with its memory in :mod:`itkm_engine.memory`.
"""

from .image_text import i2t_cross_entropy, supcon, supcon_i2t, supcon_t2i
from .instance import instance_pair_loss, pairs_in_batch
from .separation import multi_scenario_separation_loss

__all__ = [
    "supcon",
    "supcon_i2t",
    "supcon_t2i",
    "i2t_cross_entropy",
    "multi_scenario_separation_loss",
    "instance_pair_loss",
    "pairs_in_batch",
]
