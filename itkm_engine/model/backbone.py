"""The ITKM model: an image tower with ITKM's scenario embedding and group stems, plus CLIP's
frozen text tower.

The image tower is chosen by ``ModelConfig.tower`` and lives in its own file behind one small
interface (:mod:`.image_tower`): open_clip's ViT (:mod:`.clip_vit_tower`, the paper's setting) or
an ImageNet-pretrained MobileNetV2 (:mod:`.mobilenet_tower`, for CPUs). Each keeps the scenario
embedding and group stems where they belong in its architecture. :class:`ITKMModel` maps scenario
and group names to indices, validates them, and exposes what the stages, ``features.py``, the
index and ONNX export use: :meth:`ITKMModel.forward_image`, :meth:`ITKMModel.retrieval_feature`,
``feature_dim``, ``embed_dim``, the parameter groups and checkpoints. No caller asks which tower
it runs on.

The text tower is CLIP's, frozen; :meth:`ITKMModel.encode_text_embeddings` runs it from token
embeddings so the prompt learner can put learnable vectors where words would be.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ItkmError
from .checkpoint import check_model_config
from .image_tower import ImageOutput, ImageTower
from .towers import tower_class
from .weights import create_clip, get_tokenizer, uses_quick_gelu
from ..text_search import text_tower_pretrained

__all__ = ["ImageOutput", "ITKMModel", "build_model", "build_tower", "CHECKPOINT_FORMAT", "FEATURES"]

#: ``state["format"]`` of :meth:`ITKMModel.state_for_checkpoint`; bump the version on change.
#: v2: image weights under ``tower.`` (v1 kept them on the model and under ``clip.visual.``).
CHECKPOINT_FORMAT = "itkm-model"
CHECKPOINT_VERSION = 2
#: Values of ``ModelConfig.feature``.
FEATURES = ("concat", "proj")


def build_tower(clip: nn.Module, n_scenarios: int, n_groups: int, cfg: ModelConfig, *,
                load_weights: bool = True) -> ImageTower:
    """The image tower ``cfg.tower`` names.  CLIP's own vision tower is taken off ``clip`` (the
    ViT tower adopts it; other towers drop it), so the text side is all that stays on ``clip``."""
    tower = tower_class(cfg.tower).from_clip(clip, n_scenarios, n_groups, cfg, load_weights=load_weights)
    clip.visual = None
    return tower


class _TextSide(NamedTuple):
    """References to the modules of CLIP's text tower (CLIP keeps them on itself,
    CustomTextCLIP on ``clip.text``)."""

    token_embedding: nn.Embedding
    positional_embedding: nn.Parameter
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: nn.Parameter | nn.Linear | None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None
    context_length: int


class ITKMModel(nn.Module):
    """Image tower + CLIP's frozen text tower; the one model every ITKM stage trains.

    ``scenarios`` and ``groups`` fix the index order of ``scenario_idx`` / ``group_idx``.
    """

    def __init__(self, clip: nn.Module, scenarios: Sequence[str], groups: Sequence[str], cfg: ModelConfig,
                 tokenizer=None, *, load_tower_weights: bool = True) -> None:
        super().__init__()
        if cfg.feature not in FEATURES:
            raise ItkmError(f"model.feature must be one of {', '.join(FEATURES)}, got {cfg.feature!r}")
        _check_names("scenario", scenarios)
        _check_names("group", groups)
        self.quick_gelu = uses_quick_gelu(clip)
        self.tower = build_tower(clip, len(scenarios), len(groups), cfg, load_weights=load_tower_weights)
        self.clip = clip
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.scenarios: list[str] = list(scenarios)
        self.groups: list[str] = list(groups)
        self.width: int = self.tower.width
        self.embed_dim: int = self.tower.embed_dim
        self.feature_dim: int = self.width + self.embed_dim if cfg.feature == "concat" else self.embed_dim
        # CLIP's pretrained text tower (text search means something only with it); recorded in
        # checkpoints as "text_pretrained" (itkm_engine/text_search.py)
        self.text_pretrained: bool = text_tower_pretrained(cfg)
        self.freeze_text()

    # -- vocabulary ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.tower.device

    @property
    def scenario_embedding(self) -> nn.Parameter | None:
        return self.tower.scenario_embedding

    @property
    def stems(self) -> nn.ModuleList | None:
        return self.tower.stems

    def scenario_index(self, names: Iterable[str]) -> torch.Tensor:
        """CPU LongTensor of scenario positions.  An unknown name raises :class:`ItkmError`:
        call :meth:`extend` first (a new camera of a new scenario gets its own row)."""
        return _index("scenario", self.scenarios, names)

    def group_index(self, names: Iterable[str]) -> torch.Tensor:
        """CPU LongTensor of group positions (see :meth:`scenario_index`)."""
        return _index("group", self.groups, names)

    def extend(self, scenarios: Iterable[str] = (), groups: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """Append scenarios / groups the model has not seen (cameras added later).

        New scenario rows are drawn from N(0, 0.02) like the first ones; a new group's stem is a
        copy of the pretrained template.  Existing rows, stems and their indices are unchanged,
        so old outputs stay identical and older checkpoints still load.  Replaces the
        scenario-embedding parameter object: build optimizers after extending.
        Returns the names actually added.
        """
        new_s = _new_names(self.scenarios, scenarios)
        new_g = _new_names(self.groups, groups)
        if new_s:
            _check_names("scenario", self.scenarios + new_s)
            self.tower.add_scenarios(len(new_s))
            self.scenarios.extend(new_s)
        if new_g:
            _check_names("group", self.groups + new_g)
            self.tower.add_groups(len(new_g))
            self.groups.extend(new_g)
        return new_s, new_g

    # -- image side ------------------------------------------------------------------------
    def forward_image(self, x: torch.Tensor, scenario_idx: torch.Tensor, group_idx: torch.Tensor,
                      prefix: bool = False) -> ImageOutput:
        """Images ``[B,3,H,W]`` (CLIP-normalised, ``cfg.image_size``) -> :class:`ImageOutput`.
        ``prefix=True``: ``x`` is :meth:`frozen_prefix`'s output for the images instead (a
        ``Batch`` from :mod:`itkm_engine.data.stem_cache` says which it holds)."""
        s = self._as_index(scenario_idx, len(self.scenarios), "scenario", x.shape[0])
        g = self._as_index(group_idx, len(self.groups), "group", x.shape[0])
        return self.tower.forward_from_prefix(x, s, g) if prefix else self.tower(x, s, g)

    forward = forward_image

    @property
    def has_frozen_prefix(self) -> bool:
        """Whether the image tower starts with a frozen prefix (see :class:`ImageTower`)."""
        return bool(self.tower.has_frozen_prefix)

    @torch.no_grad()
    def frozen_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output for images ``x`` (no gradients: nothing in it trains)."""
        return self.tower.frozen_prefix(x)

    def retrieval_feature(self, out: ImageOutput) -> torch.Tensor:
        """The L2-normalised feature used for clustering and search (``cfg.feature``):
        ``concat`` = normalize(cat(normalize(pre), normalize(proj))) as CLIP-ReID does;
        ``proj`` = normalize(proj)."""
        if self.cfg.feature == "concat":
            return F.normalize(torch.cat([F.normalize(out.pre, dim=-1), F.normalize(out.proj, dim=-1)], dim=-1), dim=-1)
        return F.normalize(out.proj, dim=-1)

    def _as_index(self, idx: torch.Tensor | Sequence[int], n: int, what: str, batch: int) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device).reshape(-1)
        if idx.numel() != batch:
            raise ItkmError(f"{what}_idx has {idx.numel()} entries for a batch of {batch} images")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ItkmError(f"{what}_idx out of range 0..{n - 1}; map names with {what}_index() and extend() new ones")
        return idx

    # -- text side -------------------------------------------------------------------------
    def text_side(self) -> _TextSide:
        """The modules of CLIP's text tower, wherever this CLIP class keeps them."""
        from open_clip.transformer import TextTransformer  # open_clip is heavy: imported where a model exists

        clip = self.clip
        text = getattr(clip, "text", None)
        if isinstance(text, TextTransformer):
            if text.cls_emb is not None or text.use_pad_mask:
                raise ItkmError(f"the text tower of {self.cfg.name!r} (class token / pad mask) is not supported")
            return _TextSide(text.token_embedding, text.positional_embedding, text.transformer, text.ln_final,
                             text.text_projection, text.attn_mask, text.pool_type, getattr(text, "eos_id", None),
                             text.context_length)
        if hasattr(clip, "token_embedding"):
            return _TextSide(clip.token_embedding, clip.positional_embedding, clip.transformer, clip.ln_final,
                             clip.text_projection, clip.attn_mask, clip.text_pool_type,
                             getattr(clip, "text_eos_id", None), clip.context_length)
        raise ItkmError(f"the text tower of {self.cfg.name!r} ({type(text).__name__}) is not supported by ITKM")

    def encode_text_embeddings(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Run CLIP's text tower from token embeddings ``x [B,L,W]`` (the steps of
        ``CLIP.encode_text`` after ``token_embedding``); ``ids [B,L]`` are the token ids the
        embeddings stand for, used only to find the pooling (end-of-text) position.
        Returns unnormalised text features ``[B, embed_dim]``; gradients flow to ``x``."""
        from open_clip.transformer import text_global_pool

        t = self.text_side()
        cast = t.transformer.get_cast_dtype()
        x = x.to(cast) + t.positional_embedding.to(cast)
        x = t.transformer(x, attn_mask=t.attn_mask)
        x = t.ln_final(x)
        x = text_global_pool(x, ids, t.pool_type, eos_token_id=t.eos_id)
        if t.text_projection is not None:
            x = t.text_projection(x) if isinstance(t.text_projection, nn.Linear) else x @ t.text_projection
        return x

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` on the model's device."""
        if self.tokenizer is None:
            self.tokenizer = get_tokenizer(self.cfg.name)
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text features ``[N, embed_dim]`` of plain sentences (gallery text search),
        through CLIP's own ``encode_text``.  No gradients: the text tower is frozen."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return self.clip.encode_text(self.tokenize(texts), normalize=True)

    @property
    def logit_scale(self) -> torch.Tensor:
        """CLIP's learned temperature (a log value, frozen); use ``logit_scale.exp()``."""
        return self.clip.logit_scale

    # -- parameters and freezing -----------------------------------------------------------
    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters ITKM adds to the pretrained tower (scenario embedding, group stems, a new
        projection): the trainer gives them their own learning rate."""
        return self.tower.new_parameters()

    def image_parameters(self) -> list[nn.Parameter]:
        """The pretrained image-tower weights the forward pass uses and training may update (not
        the new ones; frozen layers and a stem replaced by group stems excluded)."""
        return self.tower.pretrained_parameters()

    def text_parameters(self) -> list[nn.Parameter]:
        """The text tower's parameters (always frozen; listed for accounting)."""
        seen: set[int] = set()
        out: list[nn.Parameter] = []
        t = self.text_side()
        for item in (t.token_embedding, t.positional_embedding, t.transformer, t.ln_final, t.text_projection):
            ps = [item] if isinstance(item, nn.Parameter) else list(item.parameters()) if isinstance(item, nn.Module) else []
            for p in ps:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def freeze_text(self) -> None:
        """Freeze the text tower and ``logit_scale`` (ITKM never trains them)."""
        for p in self.text_parameters():
            p.requires_grad_(False)
        self.clip.logit_scale.requires_grad_(False)
        if getattr(self.clip, "logit_bias", None) is not None:
            self.clip.logit_bias.requires_grad_(False)

    def set_image_trainable(self, trainable: bool) -> None:
        """Stage I/III train the image side (``True``); Stage II freezes it (``False``)."""
        self.tower.set_trainable(trainable)

    # -- checkpoints -----------------------------------------------------------------------
    def state_for_checkpoint(self) -> dict:
        """Everything needed to rebuild this model (weights-only safe: tensors, str, lists)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": _config_to_dict(self.cfg),
            "quick_gelu": self.quick_gelu,
            "scenarios": list(self.scenarios),
            "groups": list(self.groups),
            "text_pretrained": bool(self.text_pretrained),
            "state_dict": {k: v.detach() for k, v in self.state_dict().items()},
        }

    def load_state(self, state: dict) -> None:
        """Load :meth:`state_for_checkpoint` output.  The model takes the checkpoint's scenario
        and group lists (resizing its rows/stems to them); :meth:`extend` afterwards adds names
        the checkpoint did not have."""
        _check_state(state)
        if self.scenarios != list(state["scenarios"]) or self.groups != list(state["groups"]):
            self._resize_to(list(state["scenarios"]), list(state["groups"]))
        weights = state["state_dict"]
        if int(state.get("version", 1)) < 2:
            weights = {_v1_key(k): v for k, v in weights.items()}
        missing, unexpected = self.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ItkmError(
                f"the checkpoint does not fit model {self.cfg.name!r}: "
                f"{len(missing)} missing weights ({', '.join(missing[:3])}), "
                f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}). "
                f"It was written for model {state['model_config'].get('name')!r}."
            )

    @classmethod
    def from_checkpoint(cls, state: dict, device: torch.device | str = "cpu") -> "ITKMModel":
        """Rebuild the model a checkpoint was written from (no weights download needed).  The
        checkpoint's model settings are checked before anything is built (a crafted file must
        not make us allocate a giant model)."""
        _check_state(state)
        check_model_config(state["model_config"])
        cfg = _config_from_dict(state["model_config"])
        clip, tokenizer = create_clip(cfg, device=device, load_weights=False, quick_gelu=bool(state.get("quick_gelu")))
        model = cls(clip, state["scenarios"], state["groups"], cfg, tokenizer=tokenizer,
                    load_tower_weights=False).to(device)
        model.load_state(state)
        # recorded since checkpoints say it; older ones: what their model settings imply
        model.text_pretrained = bool(state.get("text_pretrained", text_tower_pretrained(cfg)))
        return model

    def _resize_to(self, scenarios: list[str], groups: list[str]) -> None:
        _check_names("scenario", scenarios)
        _check_names("group", groups)
        self.tower.resize_parts(len(scenarios), len(groups))
        self.scenarios, self.groups = list(scenarios), list(groups)

    def extra_repr(self) -> str:
        return (f"tower={self.cfg.tower!r}, scenarios={self.scenarios}, groups={self.groups}, "
                f"feature={self.cfg.feature!r}")


def build_model(cfg: ModelConfig, scenarios: Sequence[str], groups: Sequence[str], *,
                device: torch.device | str = "cpu") -> ITKMModel:
    """CLIP from ``cfg`` (weights resolved by :func:`~itkm_engine.model.weights.create_clip`,
    raising :class:`~itkm_engine.errors.WeightsUnavailableError`) wrapped as an ITKM model."""
    if tower_class(cfg.tower).uses_clip_weights:
        clip, tokenizer = create_clip(cfg, device=device)
    else:
        # ``pretrained`` / ``weights`` name the image tower's weights; CLIP (here only its text
        # tower) is built from the config alone: small, frozen, random where no weights exist.
        clip, tokenizer = create_clip(dataclasses.replace(cfg, pretrained=None, weights=None), device=device)
    return ITKMModel(clip, scenarios, groups, cfg, tokenizer=tokenizer).to(device)


# -- helpers ---------------------------------------------------------------------------------


def _v1_key(key: str) -> str:
    """A v1 checkpoint's weight name -> v2 (the ViT tower's weights moved under ``tower.``)."""
    for old, new in (("clip.visual.", "tower.visual."), ("scenario_embedding", "tower.scenario_embedding"),
                     ("stems.", "tower.stems.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _check_names(what: str, names: Sequence[str]) -> None:
    if not names:
        raise ItkmError(f"the model needs at least one {what}")
    if any(not isinstance(n, str) or not n for n in names):
        raise ItkmError(f"{what} names must be non-empty strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise ItkmError(f"duplicate {what} names: {list(names)!r}")


def _new_names(have: Sequence[str], names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if n not in have and n not in out:
            out.append(n)
    return out


def _index(what: str, vocab: Sequence[str], names: Iterable[str]) -> torch.Tensor:
    if isinstance(names, str):
        names = [names]
    pos = {n: i for i, n in enumerate(vocab)}
    out: list[int] = []
    unknown: list[str] = []
    for n in names:
        i = pos.get(n)
        if i is None:
            if n not in unknown:
                unknown.append(n)
        else:
            out.append(i)
    if unknown:
        raise ItkmError(
            f"the model has no {what} {', '.join(map(repr, unknown))} (it knows {', '.join(vocab)}); "
            f"call model.extend({what}s=[...]) to add it"
        )
    return torch.tensor(out, dtype=torch.long)


def _config_to_dict(cfg: ModelConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["image_size"] = list(d["image_size"])
    return d


def _config_from_dict(d: dict) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in d.items() if k in known}
    if "image_size" in kwargs:
        kwargs["image_size"] = tuple(int(v) for v in kwargs["image_size"])
    return ModelConfig(**kwargs)


def _check_state(state: dict) -> None:
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ItkmError("this file is not an ITKM model checkpoint (no 'format: itkm-model' entry)")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise ItkmError(
            f"the checkpoint was written by a newer ITKM Studio (model format v{state['version']}, "
            f"this one reads up to v{CHECKPOINT_VERSION}); update ITKM Studio"
        )
    for key in ("model_config", "scenarios", "groups", "state_dict"):
        if key not in state:
            raise ItkmError(f"the model checkpoint is incomplete: no {key!r}")

