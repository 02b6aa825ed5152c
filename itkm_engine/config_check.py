"""Validation of a :class:`~itkm_engine.config.Config` before anything is written or built.

Every value is checked against its dataclass field's type (so a new field is type-checked without
any change here) and, where it has one, a row of :data:`RANGES` (a new field that needs a range or a
set of choices gets one row).  Errors are :class:`ConfigError` naming the key, e.g.
``stage2.batch_size = 0 is out of range: 1 .. 65536``.

Also here: reading a ``config.toml`` (a damaged or non-UTF-8 file is a ConfigError, not a
traceback), applying ``--set KEY=VALUE`` items, the *lineage* check that stops a workspace
trained with one model from being continued with another (``--preset quick`` on a ``tiny``
workspace would otherwise fail with a size-mismatch deep inside the model), whether a device
asked for is on this computer, and the settings an interrupted round resumes with.

Nothing here imports torch at module level (the tower table is torch-free): the training entry
point (``train_request.py``) refuses a bad request in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

from .config import MAX_IMAGE_AREA, PRESETS, Config
from .devices import DEVICE_NAME, device_problem
from .errors import ItkmError
from .model.towers import TOWERS

__all__ = ["ConfigError", "RANGES", "validate_config", "load_config_file", "apply_sets", "check_lineage", "check_device",
           "check_device_present", "lineage_problem", "LINEAGE_KEYS", "MEMORY_SETTINGS", "take_memory_settings",
           "round_config", "resumed_config"]


class ConfigError(ItkmError):
    """A setting is unknown, of the wrong type or out of range (the message names the key)."""


_BIG = 10**9
_POS = 1e-12  # "greater than zero" for floats

#: Range (inclusive ``(lo, hi)``) or choices (a frozenset) per dotted key.  Keys that do not exist
#: in the current Config are ignored, so a row may precede its field.
RANGES: dict[str, tuple[float, float] | frozenset] = {
    "preset": frozenset(PRESETS),
    "seed": (0, 2**32 - 1),
    "model.image_size": (16, 1024),  # each side; the area cap is MAX_IMAGE_AREA
    "model.scenario_scale": (0.0, 100.0),
    "model.feature": frozenset({"concat", "proj"}),
    "model.n_ctx": (1, 16),
    "model.tower": frozenset(TOWERS),
    "cluster.k1": (1, 1000),
    "cluster.k2": (1, 1000),
    "cluster.eps": (_POS, 2.0),
    "cluster.min_samples": (1, 10_000),
    "data.num_identities": (1, 4096),
    "data.num_instances": (1, 1024),
    "data.random_erasing": (0.0, 1.0),
    "data.grayscale": (0.0, 1.0),
    "data.pad": (0, 1024),
    "data.workers": (0, 256),
    "data.extract_batch_size": (1, 65_536),
    "data.fixed_views": (0, 64),
    "data.stem_cache_mb": (0, 1_048_576),
    "inference.top_k": (1, 1_000_000),
    "inference.exact_search_limit": (1, _BIG),
    "inference.identity_eps": (_POS, 2.0),
    "inference.identity_min_samples": (1, 10_000),
    "stage2.batch_size": (1, 65_536),
    "stage2.separation_margin": (-1.0, 2.0),
    "stage2.separation_weight": (0.0, 100.0),
    "stage3.chm_text_weight": (0.0, 1.0),
    "stage3.chm_threshold": (-1.0, 2.0),
    "stage3.chm_margin": (0.0, 2.0),
    "stage3.ihm_k": (1, 1000),
    "stage3.ihm_temperature": (_POS, 10.0),
    "stage3.dru_momentum": (0.0, 1.0),
    "decisions.weight": (0.0, 100.0),
    "decisions.margin": (-1.0, 1.0),
    "decisions.batch_share": (0.0, 1.0),
}
# Rows shared by the three training stages.
for _s in ("stage1", "stage2", "stage3"):
    RANGES.update({f"{_s}.epochs": (0, 100_000), f"{_s}.iters_per_epoch": (0, 10_000_000), f"{_s}.lr": (0.0, 1.0),
                   f"{_s}.new_param_lr": (0.0, 1.0), f"{_s}.weight_decay": (0.0, 1.0),
                   f"{_s}.warmup_epochs": (0, 100_000), f"{_s}.memory_momentum": (0.0, 1.0),
                   f"{_s}.temperature": (_POS, 10.0)})
for _w in ("weight_homogeneous", "weight_cross", "weight_instance", "weight_i2t"):
    RANGES[f"stage3.{_w}"] = (0.0, 100.0)
# Each image tower's checks of its own settings (e.g. model.frozen_blocks of the MobileNetV2 tower).
for _tower in TOWERS.values():
    RANGES.update({f"model.{k}": r for k, r in _tower.config_ranges.items()})

#: The model settings that make two checkpoints one lineage (the next round loads the last one).
LINEAGE_KEYS = ("name", "image_size", "tower", "feature", "n_ctx")


def validate_config(cfg: Config) -> Config:
    """Raise :class:`ConfigError` for the first bad value (types, NaN/inf, ranges, choices)."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"not a configuration: {type(cfg).__name__}")
    _check_dataclass(cfg, "")
    check_device(cfg.device, "device")
    h, w = cfg.model.image_size
    if h * w > MAX_IMAGE_AREA:
        raise ConfigError(f"model.image_size = {list(cfg.model.image_size)} is too large "
                          f"(at most {MAX_IMAGE_AREA} pixels per crop, e.g. [512, 256])")
    if not cfg.model.name.strip():
        raise ConfigError("model.name is empty; name an open_clip model, e.g. ViT-B-16, or itkm-small")
    return cfg


def check_device(name: str | None, what: str = "--device") -> None:
    """A device name the engine understands (``auto``, ``cpu``, ``mps``, ``cuda``, ``cuda:N``)."""
    if name is not None and not (isinstance(name, str) and DEVICE_NAME.match(name)):
        raise ConfigError(f"{what} = {name!r} is not a device; use auto, cpu, cuda or cuda:N")


def check_device_present(name: str | None, what: str = "--device") -> None:
    """A device asked for *now* (``--device``, the app's device list) must be a device name and be
    on this computer: ``--device cuda:7`` without that GPU is refused before anything is written
    (it used to be saved in config.toml, and every later command called the checkpoint damaged).
    A device stored in config.toml is only a preference, resolved when the model loads."""
    check_device(name, what)
    why = device_problem(name)
    if why is not None:
        raise ConfigError(f"{what} {name!r} cannot be used: {why}. Use --device auto (the GPU when there is one, "
                          "else the CPU) or --device cpu. Nothing was changed.")


def _check_dataclass(obj, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_dataclass(value, key + ".")
            continue
        _check_value(key, value, hints[f.name])


def _check_value(key: str, value: Any, tp) -> None:
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[...]
        if value is None:
            return
        tp = next(a for a in args if a is not type(None))
    origin = typing.get_origin(tp)
    if origin is tuple:
        n = len(typing.get_args(tp))
        if not isinstance(value, (tuple, list)) or len(value) != n:
            raise ConfigError(f"{key} = {value!r} must be a list of {n} numbers")
        for v in value:
            _check_scalar(key, v, typing.get_args(tp)[0])
        return
    _check_scalar(key, value, tp)


def _check_scalar(key: str, value: Any, tp) -> None:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise ConfigError(f"{key} = {value!r} must be {names.get(tp, tp)}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r} must be a finite number (not NaN or infinity)")
    rule = RANGES.get(key)
    if isinstance(rule, frozenset):
        if value not in rule:
            raise ConfigError(f"{key} = {value!r} is not one of: {', '.join(sorted(map(str, rule)))}")
    elif rule is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = rule
        if not lo <= value <= hi:
            shown_lo = "more than 0" if lo == _POS else lo
            raise ConfigError(f"{key} = {value!r} is out of range: {shown_lo} .. {hi}")


def load_config_file(path: str | Path) -> Config:
    """A config TOML file, validated; any defect is one :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the config file {path} is not UTF-8 text (damaged?); fix it, or delete it to "
                          "use the preset's defaults (itkm train --preset ...)") from None
    try:
        cfg = Config.from_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML ({exc}); fix it, or delete it to use "
                          "the preset's defaults") from None
    except KeyError as exc:
        raise ConfigError(f"the config file {path}: {exc.args[0] if exc.args else exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"the config file {path} has a value of the wrong kind ({exc}); fix it, or delete "
                          "it to use the preset's defaults") from None
    try:
        return validate_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"the config file {path}: {exc}") from None


def apply_sets(cfg: Config, items: list[str]) -> Config:
    """``cfg`` with ``KEY=VALUE`` items applied (values parsed as JSON, else text), validated."""
    for item in items or []:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stage1.epochs=5")
        if not _is_leaf(cfg, key):
            raise ConfigError(f"--set {item!r}: unknown config key {key!r} (see config.toml in the workspace "
                              "for the keys, e.g. stage1.epochs)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, list):
            value = tuple(value)
        try:
            cfg = cfg.with_overrides(**{key: value})
            validate_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    return cfg


def _is_leaf(cfg: Config, key: str) -> bool:
    obj = cfg
    parts = key.split(".")
    for p in parts:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            return False
        obj = getattr(obj, p)
    return not dataclasses.is_dataclass(obj)


def lineage_problem(rounds, cfg: Config, *, ignore_unfinished: bool = False) -> str | None:
    """Why ``cfg`` cannot continue the training of these rounds (``Workspace.rounds()``), or ``None``.

    The next round starts from the last finished round's checkpoint (an interrupted one resumes
    from its own progress), so a different model name, crop size, tower, feature or prompt length
    cannot continue them.  A pure function of the rounds: the app asks it on its GUI thread with
    the rounds it has read, and shows the same sentence as ``itkm train``."""
    recorded = [r for r in rounds if r.config_json]
    done = [r for r in recorded if r.status == "done"]
    unfinished = [] if ignore_unfinished else [r for r in recorded if r.status in ("running", "cancelled")]
    # the model the next round loads: the last finished round's, and an interrupted round's
    candidates = done[-1:] + [r for r in unfinished[-1:] if not done or r.number > done[-1].number]
    for last in reversed(candidates):
        try:
            stored = json.loads(last.config_json)
            trained = stored.get("model", {})
        except (ValueError, AttributeError):
            continue
        now = dataclasses.asdict(cfg.model)
        diffs = [f"model.{k} {_norm(trained[k])} -> {_norm(now[k])}" for k in LINEAGE_KEYS
                 if k in trained and k in now and _norm(trained[k]) != _norm(now[k])]
        if diffs:
            return (f"this workspace's model was trained with preset {stored.get('preset', '?')!r} (round "
                    f"{last.number}); the requested settings change the model ({'; '.join(diffs)}), so they cannot "
                    f"continue its training. Keep the workspace's settings (leave out --preset/--config), or ingest "
                    "the same folders into a new workspace for a new model. Nothing was changed.")
    return None


def check_lineage(ws, cfg: Config, *, ignore_unfinished: bool = False) -> None:
    """Refuse ``cfg`` (:class:`ConfigError`) when its model differs from the one this workspace's
    rounds trained (:func:`lineage_problem`).  Reads only the database."""
    problem = lineage_problem(ws.rounds(), cfg, ignore_unfinished=ignore_unfinished)
    if problem is not None:
        raise ConfigError(problem)


#: Settings that only bound how much memory is used at once.  An interrupted round resumes with
#: the rerun's values of these (the rest of its settings stay those it started with), so a round
#: that ran out of memory continues after its last epoch with a smaller batch.
MEMORY_SETTINGS = (("data", "extract_batch_size"), ("data", "workers"), ("data", "num_identities"),
                   ("data", "num_instances"), ("stage2", "batch_size"), ("data", "stem_cache_mb"))


def take_memory_settings(stored: Config, requested: Config) -> list[str]:
    """Copy :data:`MEMORY_SETTINGS` from ``requested`` into ``stored``; returns what changed."""
    changed = []
    for part, key in MEMORY_SETTINGS:
        old, new = getattr(getattr(stored, part), key), getattr(getattr(requested, part), key)
        if old != new:
            setattr(getattr(stored, part), key, new)
            changed.append(f"{part}.{key} {old} -> {new}")
    return changed


def round_config(info, fallback: Config) -> Config:
    """The settings round ``info`` (a ``RoundInfo``) started with -- checked, since an older
    version stored them unchecked (``batch_size = 0`` then failed on every resume); ``fallback``
    for a round that stored none."""
    if not info.config_json:
        return fallback
    try:
        return validate_config(Config.from_dict(json.loads(info.config_json)))
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"round {info.number} was started with settings that cannot work ({exc}); abandon it "
                          "and start a new round: itkm train WORKSPACE --restart-round") from None


def resumed_config(info, requested: Config) -> tuple[Config, list[str], bool]:
    """The settings an interrupted round ``info`` continues with: its own, with the memory
    settings of ``requested``.  Returns (settings, the memory settings changed, whether other
    requested settings are left unused until the next round)."""
    stored = round_config(info, requested)
    changed = take_memory_settings(stored, requested)
    ignored = stored.to_dict() | {"device": None} != requested.to_dict() | {"device": None}
    return stored, changed, ignored


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v
