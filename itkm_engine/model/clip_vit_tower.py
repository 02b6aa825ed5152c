"""The paper's image tower: open_clip's ViT with ITKM's scenario embedding and group stems.

ITKM changes CLIP's vision tower in exactly one place, the token embedding step
(``VisionTransformer._embeds``):

* **group stems** -- the patch-embedding conv (``visual.conv1``) is duplicated per group
  (visible / infrared / high-res / ...), each copy starting from the pretrained weights;
* **scenario embedding** -- one learnable vector per scenario (init N(0, 0.02), times
  ``cfg.scenario_scale``) added to every token, class token included, right where the positional
  embedding is added (before patch dropout and ``ln_pre``).

:meth:`ClipViTTower.forward` re-does ``_embeds`` with those two terms and then calls the vision
tower's own modules (transformer, ``_pool``, ``proj``) unchanged; with a zero scenario embedding and
unchanged stems it computes exactly ``visual(x)`` (a test checks this).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ItkmError
from .image_tower import ImageOutput, ImageTower

__all__ = ["ClipViTTower"]


class ClipViTTower(ImageTower):
    uses_clip_weights = True

    @classmethod
    def from_clip(cls, clip: nn.Module, n_scenarios: int, n_groups: int, cfg: ModelConfig, *,
                  load_weights: bool = True) -> "ClipViTTower":
        """Adopts CLIP's own vision tower (its weights are already loaded, or come from a checkpoint)."""
        return cls(getattr(clip, "visual", None), n_scenarios, n_groups, cfg)

    def __init__(self, visual: nn.Module, n_scenarios: int, n_groups: int, cfg: ModelConfig) -> None:
        from open_clip.transformer import VisionTransformer  # open_clip is heavy: imported where a model is built

        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise ItkmError(
                f"model {cfg.name!r} has a {type(visual).__name__} image tower; ITKM needs an open_clip "
                f"VisionTransformer (a ViT-* model) for its scenario embedding and patch stems"
            )
        self.visual = visual
        self.cfg = cfg
        self.width = int(visual.class_embedding.shape[-1])
        self.embed_dim = int(visual.output_dim)
        self.init_parts(n_scenarios, n_groups, scenario_embedding=cfg.scenario_embedding, group_stems=cfg.group_stems)

    def new_stem(self) -> nn.Module:
        stem = copy.deepcopy(self.visual.conv1)
        stem.requires_grad_(True)
        return stem

    def shared_stem(self) -> nn.Module:
        return self.visual.conv1

    def _scenario_view(self, scen: torch.Tensor) -> torch.Tensor:
        return scen.unsqueeze(1)  # [B, 1, width]: every token, class token included

    def embed_tokens(self, x: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor) -> torch.Tensor:
        """``VisionTransformer._embeds`` with the group stem and the scenario embedding."""
        visual = self.visual
        x = self.run_stems(x, group_idx)  # [B, width, gh, gw]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, gh*gw, width]
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = self.add_scenario(x, scenario_idx, self.cfg.scenario_scale)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x)

    def forward(self, x: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor) -> ImageOutput:
        visual = self.visual
        tokens = visual.transformer(self.embed_tokens(x, scenario_idx, group_idx))
        pre, _ = visual._pool(tokens)
        proj = pre @ visual.proj if visual.proj is not None else pre
        return ImageOutput(pre=pre, proj=proj)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        skip = {id(p) for p in self.visual.conv1.parameters()} if self.stems is not None else set()
        return [p for p in self.visual.parameters() if id(p) not in skip]

    def set_trainable(self, trainable: bool) -> None:
        super().set_trainable(trainable)
        if self.stems is not None:
            self.visual.conv1.requires_grad_(False)
