"""Resolving CLIP weights: open_clip names and tags, local files, and the small ITKM configs.

Why this is more than one ``open_clip.create_model`` call:

* A user without internet must get a message that says what to do (give a local file with
  ``--weights PATH``, or run once with internet) -- quickly.  open_clip asks the Hugging Face hub
  for a ``.safetensors`` and then a ``.bin`` file and retries each; without a network that takes
  about 50 s before it fails.  So a tag is first looked up in the local caches (no network), then,
  where downloading is allowed at all, a 3 s reachability probe decides before any download.
* OpenAI's weights were trained with QuickGELU, but open_clip 3.3's ``ViT-B-16`` config says
  plain GELU and only *warns* about the mismatch; the tag's ``quick_gelu`` flag is applied here so
  the pretrained model computes what it was trained to compute.
* The small ``itkm-tiny`` / ``itkm-small`` configs (tests, CPU demo) must be registered with
  open_clip before any name lookup.

open_clip (with timm and torchvision, ~2 s) is imported inside the functions that use it, so the
model package can be imported -- by the query facade in the app's process, say -- for what needs
no network: checkpoint keys, the model's key, the tower registry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import UnsafeCheckpointError, WeightsUnavailableError

__all__ = [
    "CONFIGS_DIR",
    "ITKM_CONFIGS",
    "register_configs",
    "create_clip",
    "resolve_pretrained",
    "find_weights_file",
    "uses_quick_gelu",
    "get_tokenizer",
]

log = logging.getLogger(__name__)

#: Folder of the JSON model configs shipped with the package (package data).
CONFIGS_DIR = Path(__file__).with_name("configs")
#: Names of the configs in :data:`CONFIGS_DIR`.
ITKM_CONFIGS: tuple[str, ...] = tuple(sorted(p.stem for p in CONFIGS_DIR.glob("*.json")))

#: File names looked for, in this order, when ``weights`` names a folder (open_clip's own
#: preference, plus ``.pt``).
WEIGHT_FILE_NAMES: tuple[str, ...] = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pt",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
)
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth")

_PROBE_TIMEOUT_S = 3.0
_registered = False
_tokenizers: dict[str, object] = {}
_tokenizer_lock = threading.Lock()


def register_configs() -> None:
    """Register the package's model configs with open_clip.  Idempotent (registers once)."""
    import open_clip  # heavy (~2 s with timm and torchvision): only when a model is built

    global _registered
    if _registered and all(n in open_clip.list_models() for n in ITKM_CONFIGS):
        return
    open_clip.add_model_config(CONFIGS_DIR)
    _registered = True


def create_clip(
    cfg: ModelConfig,
    *,
    device: torch.device | str = "cpu",
    load_weights: bool = True,
    quick_gelu: bool | None = None,
) -> tuple[nn.Module, object]:
    """Build the open_clip model named by ``cfg.name`` at ``cfg.image_size`` and its tokenizer.

    Weights: ``cfg.weights`` (a local file, or a folder holding one) wins; else ``cfg.pretrained``
    (an open_clip tag such as ``"openai"``, fetched by open_clip where there is internet); else
    random initialisation.  ``load_weights=False`` builds the same architecture without loading
    anything (used when an ITKM checkpoint will supply every weight), so it never touches disk
    or network.  ``quick_gelu`` overrides the activation choice (``None``: what the tag says).

    The positional embedding is built for the ``cfg.image_size`` grid; square pretrained
    weights are interpolated to it by open_clip on load.

    Raises :class:`WeightsUnavailableError` (with how to fix it) when weights cannot be had.
    """
    import open_clip

    register_configs()
    name = cfg.name
    image_size = tuple(int(v) for v in cfg.image_size)
    if len(image_size) != 2 or min(image_size) <= 0:
        raise WeightsUnavailableError(f"model.image_size must be (height, width), got {cfg.image_size!r}")
    schema = _schema(name)
    if schema is None and open_clip.get_model_config(name) is None:
        raise WeightsUnavailableError(
            f"unknown model {name!r}: not an open_clip model name nor one of ITKM's configs "
            f"({', '.join(ITKM_CONFIGS)}). See open_clip.list_models() for the names."
        )

    if quick_gelu is None:
        quick_gelu = _tag_quick_gelu(name, cfg.pretrained)

    checkpoint: str | None = None
    if load_weights and schema is None:
        if cfg.weights:
            checkpoint = str(find_weights_file(cfg.weights, name=name, tag=cfg.pretrained))
        elif cfg.pretrained:
            checkpoint = str(resolve_pretrained(name, cfg.pretrained))

    try:
        with _quiet_random_init(expected=checkpoint is None and schema is None):
            model = open_clip.create_model(
                name,
                pretrained=checkpoint,
                load_weights=load_weights,
                force_image_size=image_size,
                force_quick_gelu=bool(quick_gelu),
                device=device,
            )
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"the weights file {checkpoint} needs code execution to load (a pickle of arbitrary "
            f"objects) and was refused. Use a plain state-dict file (.safetensors/.bin) instead."
        ) from e
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, AssertionError) as e:
        # (open_clip asserts on some shape mismatches of a foreign state dict)
        if checkpoint is None and schema is None:
            raise  # random init failing is a bug, not a user error
        where = checkpoint or name
        raise WeightsUnavailableError(
            f"could not load CLIP weights for model {name!r} from {where}: {_short(e)}\n"
            f"The file must be an open_clip state dict for this exact model ({name}); give another "
            f"with --weights PATH, or choose the matching --model."
        ) from e

    return model, get_tokenizer(name)


def get_tokenizer(name: str):
    """open_clip's tokenizer of model ``name``, built once per name (reading the BPE vocabulary
    takes a noticeable fraction of a second; the tokenizer holds no per-call state)."""
    import open_clip

    with _tokenizer_lock:
        tok = _tokenizers.get(name)
        if tok is None:
            register_configs()
            try:
                tok = _tokenizers[name] = open_clip.get_tokenizer(name)
            except (RuntimeError, OSError, ValueError) as e:
                raise WeightsUnavailableError(f"could not build the tokenizer of {name!r}: {_short(e)}") from e
        return tok


def uses_quick_gelu(clip: nn.Module) -> bool:
    """Whether ``clip``'s transformer blocks use QuickGELU (stored in ITKM checkpoints, since
    the activation has no weights to tell it)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in clip.modules())


def find_weights_file(path: str | os.PathLike, *, name: str = "", tag: str | None = None) -> Path:
    """The weights file ``path`` names: the file itself, or the preferred file in a folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        for fname in WEIGHT_FILE_NAMES:
            if (p / fname).is_file():
                return p / fname
        found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix in WEIGHT_SUFFIXES)
        if len(found) == 1:
            return found[0]
        what = "several candidate files: " + ", ".join(q.name for q in found) if found else "no weights file"
        raise WeightsUnavailableError(
            f"the weights folder {p} holds {what}. Expected one of {', '.join(WEIGHT_FILE_NAMES[:3])}; "
            f"give the file itself with --weights PATH."
        )
    raise WeightsUnavailableError(
        f"weights file {p} does not exist. Give an existing open_clip checkpoint of model "
        f"{name or '?'}{f' ({tag})' if tag else ''} with --weights PATH (a .safetensors/.bin/.pt file "
        f"or a folder containing open_clip_pytorch_model.bin), or leave --weights out to use "
        f"open_clip's download."
    )


def resolve_pretrained(name: str, tag: str, *, cache_dir: str | None = None) -> Path:
    """A local file holding open_clip's pretrained weights ``tag`` of ``name``.

    ``tag`` may also be a path to a file.  Looks in the Hugging Face and open_clip caches first
    (no network); downloads only when allowed (``HF_HUB_OFFLINE`` unset) and the host answers.
    """
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        if Path(tag).expanduser().is_file():
            return Path(tag).expanduser()
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise WeightsUnavailableError(
            f"{tag!r} is neither a pretrained tag of model {name!r} nor an existing file. "
            + (f"Tags of {name}: {', '.join(tags)}." if tags else f"open_clip has no pretrained weights for {name}; "
               "use pretrained = \"\" (random init) or give a file with --weights PATH.")
        )

    cached = _cached_file(tag_cfg, cache_dir)
    if cached is not None:
        return cached

    hint = (
        f"Either give a local copy with --weights PATH (an open_clip_pytorch_model.bin / .safetensors "
        f"of {name} {tag}, or the folder holding it), or run once with internet so open_clip can "
        f"download and cache it."
    )
    if _offline():
        raise WeightsUnavailableError(
            f"CLIP weights {name} ({tag}) are not in the local cache and downloads are off "
            f"(HF_HUB_OFFLINE is set). {hint}"
        )
    host = _download_host(tag_cfg)
    if not _reachable(host):
        raise WeightsUnavailableError(
            f"CLIP weights {name} ({tag}) are not in the local cache and {host} cannot be reached "
            f"(no internet?). {hint}"
        )
    try:
        from open_clip.pretrained import download_pretrained

        target = download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 -- any hub/HTTP/disk failure means the same to the user
        raise WeightsUnavailableError(f"downloading CLIP weights {name} ({tag}) failed: {_short(e)}. {hint}") from e
    if not target or not Path(target).is_file():
        raise WeightsUnavailableError(f"open_clip returned no weights file for {name} ({tag}). {hint}")
    return Path(target)


# -- helpers ---------------------------------------------------------------------------------


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(expected: bool) -> Iterator[None]:
    """open_clip warns on the root logger whenever no weights are loaded; when random init is
    what was asked for (tests, small configs, checkpoint rebuilds) that warning is noise."""
    if not expected:
        yield
        return
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _schema(name: str) -> str | None:
    for prefix in ("hf-hub:", "local-dir:"):
        if name.startswith(prefix):
            return prefix[:-1]
    return None


def _tag_quick_gelu(name: str, tag: str | None) -> bool:
    """QuickGELU when the model config or the pretrained tag says so (OpenAI weights)."""
    import open_clip

    if _schema(name) is not None:
        return False
    model_cfg = open_clip.get_model_config(name) or {}
    if model_cfg.get("quick_gelu", False):
        return True
    if not tag:
        return False
    return bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))


def _offline() -> bool:
    """Offline when the environment says so now (huggingface_hub reads it only at import)."""
    truthy = {"1", "true", "yes", "on"}
    env = any(os.environ.get(k, "").strip().lower() in truthy for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        from huggingface_hub import constants

        return env or bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return env


def _cached_file(tag_cfg: dict, cache_dir: str | None) -> Path | None:
    """The weights of a tag if a previous run already downloaded them (no network)."""
    if tag_cfg.get("file") and Path(tag_cfg["file"]).is_file():
        return Path(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
            from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
        except ImportError:
            hub = ""
        else:
            repo_id, filename = os.path.split(hub)
            names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
            if filename and filename.endswith((".bin", ".pth")):
                names.insert(0, filename[:-4] + ".safetensors")
            for fname in names:
                found = try_to_load_from_cache(repo_id, fname, cache_dir=cache_dir)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        folder = Path(cache_dir) if cache_dir else Path("~/.cache/clip").expanduser()
        candidate = folder / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _download_host(tag_cfg: dict) -> str:
    if tag_cfg.get("hf_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname or "huggingface.co"
    return urlparse(tag_cfg.get("url", "")).hostname or "huggingface.co"


def _reachable(host: str) -> bool:
    """A short TCP probe, so a machine without network fails in seconds rather than after
    the hub client's retries.  Skipped (assumed reachable) behind a proxy, which a direct
    connection cannot speak for."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
