"""The fine-tuned image encoder as one ONNX file, for trackers (deep-sort-realtime and the like).

One file, the scenario and the group as inputs:

    inputs   images       float32 [B, 3, H, W]  RGB, resized to (H, W), CLIP-normalised
             scenario_idx int64   [B]          index into the ``scenarios`` metadata list
             group_idx    int64   [B]          index into the ``groups`` metadata list
    output   embedding    float32 [B, D]        L2-normalised retrieval feature (what ITKM searches)

The model's group stems pick a stem per sample with data-dependent Python control flow, which a
traced graph cannot keep.  The exported graph therefore runs the encoder once per group with that
group's stem fixed and selects each sample's row by ``group_idx`` (a gather): exact for any mix of
groups, at (number of groups) x the compute of one pass.  Only ``model.forward_image`` and
``model.retrieval_feature`` are used, so any image tower behind that interface exports the same
way.  ``export_onnx(..., group="visible")`` (CLI ``--group``) writes a one-group file instead: no
``group_idx`` input and a single pass, for a tracker whose cameras are all of one group.  The
file's metadata (``metadata_props``) carries the scenario and group names, the input size, and
the normalisation mean/std, so a consumer needs nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write_bytes
from .data.imageio import BadImage, load_rgb
from .data.loading import CLIP_MEAN, CLIP_STD, CropTransform
from .errors import ItkmError
from .export import export_destination
from .progress import Reporter

__all__ = ["OnnxExportError", "export_onnx", "check_onnx", "check_destination", "OnnxCheck", "trained_round",
           "UNTRAINED_NOTE"]


class OnnxExportError(ItkmError):
    """The encoder could not be exported or the export does not match the model."""


#: What an export of a workspace without a finished round says (the CLI prints it, the app shows it).
UNTRAINED_NOTE = ("this workspace has no trained round yet: the file holds the initial encoder (pretrained "
                  "weights, before any ITKM training); train a round first for the fine-tuned one")


def trained_round(session) -> int | None:
    """The round whose encoder the session serves (``None``: the initial, untrained one)."""
    done = [r.number for r in session.ws.rounds() if r.status == "done" and r.checkpoint]
    return done[-1] if done else None


def _require(module: str):
    """``onnx`` / ``onnxruntime`` (dependencies of the package); one line if an install lacks them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OnnxExportError(f"ONNX export needs the {module} package, which this installation lacks: "
                              "pip install onnx onnxruntime (or reinstall itkm-studio)") from None


class _Encoder(torch.nn.Module):
    """All groups (``group=None``: the graph takes ``group_idx``), or one group fixed."""

    def __init__(self, model, n_groups: int, group: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.n_groups = n_groups
        self.group = group

    def _feature(self, images: torch.Tensor, scenario_idx: torch.Tensor, g: int) -> torch.Tensor:
        out = self.model.forward_image(images, scenario_idx, torch.full_like(scenario_idx, g))
        return self.model.retrieval_feature(out)

    def forward(self, images: torch.Tensor, scenario_idx: torch.Tensor,
                group_idx: torch.Tensor | None = None) -> torch.Tensor:
        if self.group is not None:
            return self._feature(images, scenario_idx, self.group)
        stacked = torch.stack([self._feature(images, scenario_idx, g) for g in range(self.n_groups)], dim=1)  # [B,G,D]
        index = group_idx.view(-1, 1, 1).expand(-1, 1, stacked.shape[-1])
        return stacked.gather(1, index).squeeze(1)


def check_destination(ws, out: str | Path) -> Path:
    """Where the ONNX file goes: a ``.onnx`` name that passes the check every export makes
    (:func:`itkm_engine.export.check_export_destination`: no folders, links, devices, user images
    or workspace files)."""
    return _destination(ws, out)[0]


def _destination(ws, out: str | Path) -> tuple[Path, tuple[int, int]]:
    if Path(os.fspath(out)).suffix.lower() != ".onnx":
        raise OnnxExportError(f"{out} does not end in .onnx: give a file name such as encoder.onnx")
    return export_destination(ws, out)


def export_onnx(session, out: str | Path, *, group: str | None = None, opset: int = 17,
                reporter: Reporter | None = None) -> Path:
    """Write the session's current image encoder to ``out`` (atomically).  Returns the path.

    ``group``: export for one group only (e.g. ``visible`` for a colour camera): the graph then
    has no ``group_idx`` input and costs one pass instead of one per group."""
    import io
    import warnings

    onnx = _require("onnx")
    reporter = reporter or Reporter(job="export")
    # The folder checked now is the folder written at the end (minutes later for a large model):
    # one swapped for a link meanwhile is refused, never followed.
    out, folder = _destination(session.ws, out)
    trained = trained_round(session)
    if trained is None:
        reporter.warning(UNTRAINED_NOTE)
    model = session.model()
    model.eval()
    h, w = session.cfg.model.image_size
    n_groups = max(1, len(model.groups))
    g = None
    if group is not None:
        if group not in model.groups:
            raise OnnxExportError(f"the model knows no group {group!r}: choose one of {', '.join(model.groups)}")
        g = list(model.groups).index(group)
    enc = _Encoder(model, n_groups, g).eval()
    dev = next(model.parameters()).device
    names = ["images", "scenario_idx"] + ([] if g is not None else ["group_idx"])
    example = (torch.zeros(2, 3, h, w, device=dev),) + tuple(
        torch.zeros(2, dtype=torch.long, device=dev) for _ in names[1:])
    reporter.update(0.1, stage="export", message="tracing the image encoder")
    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        # The encoder traces one fixed pass per group on purpose (see _Encoder): the tracer's
        # warnings about Python values inside the stems' routing are expected, not the user's.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                enc, example, buf, input_names=names, output_names=["embedding"],
                dynamic_axes={n: {0: "batch"} for n in names + ["embedding"]},
                opset_version=opset, dynamo=False,
            )
    except Exception as exc:  # the exporter's own errors are many and unrelated to the user's input
        raise OnnxExportError(f"the image encoder could not be exported to ONNX ({type(exc).__name__}: {exc}); "
                              "report this with the workspace's config.toml") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {
        "itkm.scenarios": json.dumps(list(model.scenarios)),
        "itkm.groups": json.dumps(list(model.groups) if g is None else [group]),
        "itkm.image_size": json.dumps([int(h), int(w)]),
        "itkm.mean": json.dumps(list(CLIP_MEAN)),
        "itkm.std": json.dumps(list(CLIP_STD)),
        "itkm.checkpoint": session.checkpoint_key(),
        "itkm.round": json.dumps(trained),  # null: the initial encoder, before any training
    }
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    atomic_write_bytes(out, proto.SerializeToString(), folder=folder)
    reporter.update(1.0, stage="export", message=f"encoder written to {out}")
    return out


@dataclass(frozen=True)
class OnnxCheck:
    """Result of :func:`check_onnx`: how many crops, the largest |onnx - torch| element, and the
    lowest cosine between the two features of one crop."""

    n: int
    max_abs_diff: float
    min_cosine: float


def check_onnx(session, path: str | Path, n: int = 32, seed: int = 0) -> OnnxCheck:
    """Run ``n`` of the workspace's crops (drawn across cameras, so several groups mix in one
    batch) through onnxruntime and through torch; compare."""
    ort = _require("onnxruntime")
    model = session.model()
    images = session.images()
    tf = CropTransform(session.cfg.model.image_size)
    rows, crops = [], []
    for r in np.random.default_rng(seed).permutation(len(images)):
        if len(rows) == n:
            break
        try:
            crops.append(tf(load_rgb(images.path[r])))
        except (BadImage, OSError):  # moved or unreadable since ingest: check with another crop
            continue
        rows.append(int(r))
    if not rows:
        raise OnnxExportError("none of the workspace's images can be read to check the export with "
                              "(were the camera folders moved?); the file was written; use --no-check to skip")
    rows = np.asarray(rows)
    x = torch.stack(crops)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in sess.get_inputs()]
    s_idx = model.scenario_index(list(images.scenario[rows])).long().cpu()
    if "group_idx" in inputs:
        g_idx = model.group_index(list(images.group[rows])).long().cpu()
    else:  # a one-group file: every crop through that group's stem
        fixed = json.loads(sess.get_modelmeta().custom_metadata_map["itkm.groups"])
        g_idx = model.group_index(fixed * len(rows)).long().cpu()
    dev = next(model.parameters()).device
    with torch.no_grad():
        ref = model.retrieval_feature(model.forward_image(x.to(dev), s_idx.to(dev), g_idx.to(dev))).float().cpu().numpy()
    feed = {"images": x.numpy(), "scenario_idx": s_idx.numpy(), "group_idx": g_idx.numpy()}
    got = sess.run(["embedding"], {k: v for k, v in feed.items() if k in inputs})[0]
    diff = float(np.abs(got - ref).max())
    return OnnxCheck(len(rows), diff, float((got * ref).sum(axis=1).min()))
