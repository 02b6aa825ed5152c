"""The demo camera set: a multi-scenario data set with known identities, written to a folder.

Why this exists: the app, the CLI and the tests must run anywhere, without downloading a ReID
dataset, and still exercise everything that makes UMS-ReID hard (DESIGN.md section 1).  This
module decides who appears in which camera and when, names and writes the files and their
manifest; the crops themselves are drawn by :mod:`itkm_engine.data.demo_render` (people, clothes,
the per-camera looks: lighting, an infrared-looking camera, a low-resolution camera), and about
half the people wear other clothes in the second clothing-change camera.

Layout written (the ``scenario-folders`` layout, Market-1501 file names)::

    ROOT/demo_manifest.json                        written last: the set is complete
    ROOT/.itkm-demo                                marker written first: this is a demo folder
    ROOT/visible-infrared/vis-a/0001_c1s1_000012_00.jpg
    ROOT/visible-infrared/vis-b/..._c2s1_...       ROOT/visible-infrared/ir-a/..._c3s1_...
    ROOT/visible-infrared/ir-b/..._c8s1_...       (infrared="both", the default: near-infrared)
    ROOT/cross-resolution/hr-a/..._c4s1_...        ROOT/cross-resolution/lr-a/..._c5s1_...
    ROOT/clothing-change/cc-a/..._c6s1_...         ROOT/clothing-change/cc-b/..._c7s1_...

File name: ``f"{pid:04d}_c{camnum}s1_{frame:06d}_00.jpg"``; ``camnum`` is global and unique per
camera, frames increase along each camera's time line (tracks of one person are consecutive
frames), and each file's mtime is ``DEMO_EPOCH + frame`` seconds so timestamps are stable.

Every random draw comes from a :class:`numpy.random.Generator` seeded by ``(seed, purpose, ...)``
and JPEG quality is fixed per camera, so the same seed gives the same bytes, and an identity looks
the same whatever ``identities`` is (identity 7 of a 60-identity set is identity 7 of an 8-one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..cv import cv2
from ..errors import ItkmError
from ..progress import Reporter
from .demo_render import (
    STREAM_ASSIGN,
    STREAM_CAMERA,
    STREAM_FRAMES,
    STREAM_IMAGE,
    STREAM_NIR,
    STREAM_ORDER,
    VIEWS,
    CameraLook,
    DemoCameraSpec,
    Person,
    Shot,
    render_crop,
)

__all__ = [
    "DEMO_CAMERAS",
    "INFRARED_KINDS",
    "REALISTIC",
    "demo_cameras",
    "DEMO_EPOCH",
    "DEMO_NAME_RE",
    "MANIFEST_NAME",
    "MARKER_NAME",
    "DemoCamera",
    "DemoInfo",
    "make_demo",
    "make_two_site_demo",
    "parse_demo_name",
    "is_demo_folder",
    "complete_demo_size",
]

#: Bump when the drawing changes, so an old demo folder is regenerated instead of reused.
GENERATOR_VERSION = 2  # 2: the near-infrared camera ir-b (infrared="both" by default)
MANIFEST_NAME = "demo_manifest.json"
MARKER_NAME = ".itkm-demo"
#: File mtimes are ``DEMO_EPOCH + frame`` seconds (2023-11-14T22:13:20Z + frame).
DEMO_EPOCH = 1_700_000_000
#: Parses a demo file name: person id, camera number, frame.
DEMO_NAME_RE = re.compile(r"^(\d{4})_c(\d+)s1_(\d{6})_00\.jpg$")
MAX_FRAME = 999_999

#: The seven cameras every demo set has, in camera-number order (who appears where is planned on
#: these; ``ir-b`` below is planned on top, so adding it leaves these cameras' crops unchanged).
_BASE_CAMERAS: tuple[DemoCameraSpec, ...] = (
    DemoCameraSpec("vis-a", "visible-infrared", "visible", 1, "visible", 128),
    DemoCameraSpec("vis-b", "visible-infrared", "visible", 2, "visible", 128),
    DemoCameraSpec("ir-a", "visible-infrared", "infrared", 3, "infrared", 128),
    DemoCameraSpec("hr-a", "cross-resolution", "high-res", 4, "visible", 144),
    DemoCameraSpec("lr-a", "cross-resolution", "low-res", 5, "visible", 128, lowres=True),
    DemoCameraSpec("cc-a", "clothing-change", "all", 6, "visible", 128),
    DemoCameraSpec("cc-b", "clothing-change", "all", 7, "visible", 128),
)
#: The second infrared kind: a near-infrared camera (SYSU-MM01 / RegDB-like: a grey,
#: contrast-stretched photo of the same clothes under an infrared lamp, not a thermal image).
_NIR_CAMERA = DemoCameraSpec("ir-b", "visible-infrared", "infrared", 8, "near-infrared", 128)
#: ``make_demo(infrared=...)``: which infrared cameras the set has.
#: "both" (default): ir-a thermal + ir-b near-infrared; "thermal": ir-a only (the set before
#: near-infrared existed); "nir": ir-a filmed as near-infrared (same people and shots as
#: "thermal", so the two kinds compare pairwise).
INFRARED_KINDS = ("both", "thermal", "nir")
#: Probability that a person of the visible-infrared scenario also walks past ir-b.
_NIR_SHARE = 0.7
#: ``make_demo(**REALISTIC)``: the regime of real camera networks -- many people, a handful of
#: crops per person per camera, groups of a few hundred crops (issue 20).
REALISTIC = {"identities": 90, "images_per_camera": (2, 6)}


def demo_cameras(infrared: str = "both") -> tuple[DemoCameraSpec, ...]:
    """The cameras of a demo set with ``infrared`` (one of :data:`INFRARED_KINDS`)."""
    if infrared == "thermal":
        return _BASE_CAMERAS
    if infrared == "nir":
        return tuple(dataclasses.replace(c, modality="near-infrared") if c.modality == "infrared" else c
                     for c in _BASE_CAMERAS)
    if infrared == "both":
        return _BASE_CAMERAS[:3] + (_NIR_CAMERA,) + _BASE_CAMERAS[3:]
    raise ItkmError(f"infrared must be one of {', '.join(INFRARED_KINDS)}; got {infrared!r}")


#: The default camera set (``infrared="both"``), in scenario order.
DEMO_CAMERAS: tuple[DemoCameraSpec, ...] = demo_cameras("both")
_SCENARIO_CAMERAS: dict[str, tuple[DemoCameraSpec, ...]] = {
    s: tuple(c for c in _BASE_CAMERAS if c.scenario == s) for s in dict.fromkeys(c.scenario for c in _BASE_CAMERAS)
}
_SCENARIO_ORDER: tuple[str, ...] = tuple(_SCENARIO_CAMERAS)


@dataclass(frozen=True)
class DemoCamera:
    """What was written for one camera."""

    scenario: str
    group: str
    camnum: int
    n_images: int


@dataclass
class DemoInfo:
    """Summary of a demo folder (returned by :func:`make_demo`)."""

    root: Path
    n_images: int
    n_identities: int
    cameras: dict[str, DemoCamera]
    seconds: float  # wall time of this call (near zero when an existing set was reused)
    clothes_changed: tuple[int, ...] = ()  # person ids wearing other clothes in cc-b
    reused: bool = False  # True when a complete set with the same parameters was already there


# ---------------------------------------------------------------------------------------------
# Public helpers


def parse_demo_name(name: str) -> tuple[int, int, int]:
    """``"0007_c3s1_000120_00.jpg"`` -> ``(7, 3, 120)``; raises :class:`ItkmError` otherwise."""
    m = DEMO_NAME_RE.match(name)
    if m is None:
        raise ItkmError(f"{name!r} is not a demo file name (expected 0001_c1s1_000001_00.jpg)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def is_demo_folder(path: str | Path) -> bool:
    """True when ``path`` was written (completely or partly) by :func:`make_demo`."""
    path = Path(path)
    return (path / MARKER_NAME).is_file() or (path / MANIFEST_NAME).is_file()


def complete_demo_size(path: str | Path) -> int | None:
    """How many crops the demo set in ``path`` holds when it is complete (its manifest, written
    last, says so), else None: not made yet, or interrupted."""
    try:
        manifest = json.loads((Path(path) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not manifest.get("complete"):
        return None
    n = manifest.get("n_images")
    return n if isinstance(n, int) and n > 0 else None


def make_demo(
    out_dir: str | Path,
    *,
    identities: int = 60,
    images_per_camera: int | tuple[int, int] | None = None,
    seed: int = 0,
    id_offset: int = 0,
    infrared: str = "both",
    reporter: Reporter | None = None,
) -> DemoInfo:
    """Write the demo camera set into ``out_dir`` and describe it.

    ``identities`` people (ids ``id_offset + 1 .. id_offset + identities``; 3..9999 people, ids
    up to 9999) each appear in >= 2 cameras of one
    *primary* scenario (assigned round-robin, so every scenario has cross-camera matches), and
    with probability 0.75 in each other scenario too (there mostly in >= 2 cameras, sometimes
    in 1).  About half of them wear other clothes in ``cc-b``.  ``images_per_camera`` is the
    number of crops per person per camera: an int, a ``(low, high)`` range drawn per person and
    camera, or ``None`` (4..8); the default gives roughly 2,000 crops, drawn in a few seconds on
    one core.  Real camera networks have many people and few crops each: e.g. ``identities=90,
    images_per_camera=(2, 6)`` (:data:`REALISTIC`) makes groups of a few hundred crops with a
    handful per person.

    ``infrared`` (:data:`INFRARED_KINDS`): "both" (default) films the visible-infrared scenario
    with a thermal-looking camera (``ir-a``: bright skin, clothes by emissivity, not colour) and a
    near-infrared one (``ir-b``: a grey, contrast-stretched photo of the same clothes, as
    SYSU-MM01's and RegDB's infrared cameras); "thermal" has ``ir-a`` only; "nir" films ``ir-a``
    as near-infrared.  The other cameras' crops are the same whichever is chosen.

    The whole folder (images, names, mtimes, manifest) is a function of the parameters.

    Idempotent: a folder holding a complete set made with the same parameters is returned as is.
    A demo folder with other parameters, or an interrupted one, is regenerated (only the demo's
    own files are removed).  A non-empty folder that is not a demo folder is refused.
    """
    reporter = reporter or Reporter()
    t0 = time.monotonic()
    identities, images_per_camera, seed = _validate_params(identities, images_per_camera, seed)
    id_offset = _validate_offset(id_offset, identities)
    specs = demo_cameras(infrared)
    root = Path(out_dir)
    params = {
        "generator_version": GENERATOR_VERSION,
        "identities": identities,
        "images_per_camera": list(images_per_camera) if isinstance(images_per_camera, tuple) else images_per_camera,
        "seed": seed,
        "infrared": infrared,
    }
    if id_offset:  # only when set, so folders written before the parameter existed stay valid
        params["id_offset"] = id_offset

    if root.exists() and not root.is_dir():
        raise ItkmError(f"demo output {root} exists and is not a folder")
    if root.is_dir():
        existing = _reuse_existing(root, params)
        if existing is not None:
            existing.seconds = time.monotonic() - t0
            reporter.update(1.0, stage="demo", message="demo set already complete")
            return existing
        if any(root.iterdir()) and not is_demo_folder(root):
            raise ItkmError(
                f"{root} is not empty and is not a demo folder; choose an empty or new folder "
                "for the demo data (nothing was written)"
            )
        _clear_previous_demo(root)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / MARKER_NAME, json.dumps(params, sort_keys=True) + "\n")

    persons = {pid: Person.draw(seed, pid) for pid in range(id_offset + 1, id_offset + identities + 1)}
    cameras = {spec.name: CameraLook.build(seed, spec) for spec in specs}
    plan = _plan(seed, identities, images_per_camera, id_offset, nir_camera=_NIR_CAMERA in specs)
    total = sum(len(shots) for shots in plan.values())
    reporter.log(f"drawing {total} demo crops of {identities} identities in {len(cameras)} cameras")

    files: list[str] = []
    per_camera: dict[str, int] = {}
    done = 0
    for spec in specs:
        cam = cameras[spec.name]
        folder = root / spec.scenario / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        shots = plan[spec.name]
        for shot in shots:
            reporter.check()
            person = persons[shot.pid]
            rng = np.random.default_rng([seed, STREAM_IMAGE, spec.camnum, shot.pid, shot.index])
            outfit = person.alt_outfit if (spec.name == "cc-b" and person.changes_clothes) else person.outfit
            img = render_crop(cam, person, outfit, shot, rng)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cam.jpeg_quality])
            if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
                raise ItkmError(f"could not encode a demo image for camera {spec.name}")
            name = f"{shot.pid:04d}_c{spec.camnum}s1_{shot.frame:06d}_00.jpg"
            path = folder / name
            with open(path, "wb") as fh:
                fh.write(buf.tobytes())
            stamp = DEMO_EPOCH + shot.frame
            os.utime(path, (stamp, stamp))
            files.append(f"{spec.scenario}/{spec.name}/{name}")
            done += 1
            if done % 25 == 0 or done == total:
                reporter.update(done / total, stage="demo", message=f"{spec.name}: {done}/{total} crops")
        per_camera[spec.name] = len(shots)

    changed = tuple(pid for pid, p in persons.items() if p.changes_clothes and _plan_has(plan, "cc-b", pid))
    info = DemoInfo(
        root=root,
        n_images=len(files),
        n_identities=identities,
        cameras={
            s.name: DemoCamera(s.scenario, s.group, s.camnum, per_camera[s.name]) for s in specs
        },
        seconds=time.monotonic() - t0,
        clothes_changed=changed,
    )
    manifest = {
        "format": "itkm-demo",
        "complete": True,
        "params": params,
        "n_images": info.n_images,
        "n_identities": info.n_identities,
        "epoch": DEMO_EPOCH,
        "name_pattern": "{pid:04d}_c{camnum}s1_{frame:06d}_00.jpg",
        "cameras": {
            s.name: {
                "scenario": s.scenario,
                "group": s.group,
                "camnum": s.camnum,
                "modality": s.modality,
                "n_images": per_camera[s.name],
            }
            for s in specs
        },
        "clothes_changed": list(changed),
        "files": files,
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    reporter.update(1.0, stage="demo", message=f"wrote {info.n_images} crops")
    return info


def _plan_has(plan: dict[str, list["Shot"]], camera: str, pid: int) -> bool:
    return any(s.pid == pid for s in plan[camera])


# ---------------------------------------------------------------------------------------------
# Folder bookkeeping


def _validate_params(identities, images_per_camera, seed) -> tuple[int, int | tuple[int, int] | None, int]:
    if isinstance(identities, bool) or not isinstance(identities, (int, np.integer)):
        raise ItkmError(f"identities must be an integer, got {identities!r}")
    if not 3 <= int(identities) <= 9999:
        # >= 3: each scenario is some identity's primary one, so each has cross-camera matches
        raise ItkmError(f"identities must be between 3 and 9999 (4-digit person ids), got {identities}")
    if isinstance(images_per_camera, (tuple, list)):
        lo_hi = tuple(images_per_camera)
        if (len(lo_hi) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in lo_hi)
                or not 1 <= lo_hi[0] <= lo_hi[1] <= 50):
            raise ItkmError(f"images_per_camera as a range must be (low, high) with 1 <= low <= high <= 50, "
                            f"got {images_per_camera!r}")
        images_per_camera = (int(lo_hi[0]), int(lo_hi[1]))
    elif images_per_camera is not None:
        if isinstance(images_per_camera, bool) or not isinstance(images_per_camera, (int, np.integer)):
            raise ItkmError(f"images_per_camera must be an integer, a (low, high) range or None, "
                            f"got {images_per_camera!r}")
        if not 1 <= int(images_per_camera) <= 50:
            raise ItkmError(f"images_per_camera must be between 1 and 50, got {images_per_camera}")
        images_per_camera = int(images_per_camera)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ItkmError(f"seed must be a non-negative integer, got {seed!r}")
    return int(identities), images_per_camera, int(seed)


def _validate_offset(id_offset, identities: int) -> int:
    if isinstance(id_offset, bool) or not isinstance(id_offset, (int, np.integer)) or int(id_offset) < 0:
        raise ItkmError(f"id_offset must be a non-negative integer, got {id_offset!r}")
    if int(id_offset) + identities > 9999:
        raise ItkmError(f"id_offset {id_offset} + {identities} identities passes 9999 (4-digit person ids); "
                        "use a smaller offset or fewer identities")
    return int(id_offset)


def make_two_site_demo(
    out_dir: str | Path,
    identities: int = 30,
    seed: int = 0,
    *,
    images_per_camera: int | tuple[int, int] | None = None,
    infrared: str = "both",
    reporter: Reporter | None = None,
) -> tuple[Path, Path]:
    """Two demo camera sets filmed at two sites that share no people: ``out_dir/site-a`` (ids
    1..identities) and ``out_dir/site-b`` (ids identities+1..2*identities), each with the full
    camera set.  Ingest each with its own site (``ingest(ws, [a]); ingest(ws, [b], site="b")``) to
    see Stage II's separation loss at work: it applies only across sites.  Returns the two roots."""
    reporter = reporter or Reporter()
    root = Path(out_dir)
    a = make_demo(root / "site-a", identities=identities, images_per_camera=images_per_camera, seed=seed,
                  infrared=infrared, reporter=reporter.child(0.0, 0.5))
    b = make_demo(root / "site-b", identities=identities, images_per_camera=images_per_camera, seed=seed,
                  id_offset=identities, infrared=infrared, reporter=reporter.child(0.5, 1.0))
    return a.root, b.root


def _reuse_existing(root: Path, params: dict) -> DemoInfo | None:
    """The existing set's summary when it is complete and made with ``params``, else None."""
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("params") != params or not manifest.get("complete"):
        return None
    files = manifest.get("files") or []
    if len(files) != manifest.get("n_images") or not all((root / f).is_file() for f in files):
        return None
    try:
        cameras = {
            name: DemoCamera(c["scenario"], c["group"], int(c["camnum"]), int(c["n_images"]))
            for name, c in manifest["cameras"].items()
        }
    except (KeyError, TypeError, ValueError):
        return None
    return DemoInfo(
        root=root,
        n_images=int(manifest["n_images"]),
        n_identities=int(manifest["n_identities"]),
        cameras=cameras,
        seconds=0.0,
        clothes_changed=tuple(int(p) for p in manifest.get("clothes_changed", [])),
        reused=True,
    )


def _clear_previous_demo(root: Path) -> None:
    """Remove what an earlier (other-parameter or interrupted) demo run wrote -- and only that.

    The manifest goes first, so a crash from here on leaves a folder that reads as incomplete.
    Only files named like demo crops inside the demo's own camera folders are deleted.
    """
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    for spec in _BASE_CAMERAS + (_NIR_CAMERA,):
        folder = root / spec.scenario / spec.name
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and DEMO_NAME_RE.match(p.name):
                p.unlink()


# ---------------------------------------------------------------------------------------------
# Who appears where and when


def _plan(seed: int, identities: int, images_per_camera: int | tuple[int, int] | None, id_offset: int = 0, *,
          nir_camera: bool = False) -> dict[str, list[Shot]]:
    """Assign identities to scenarios/cameras and lay each camera's tracks on its time line."""
    order = np.random.default_rng([seed, STREAM_ORDER]).permutation(len(_SCENARIO_ORDER))
    lo, hi = (4, 8) if images_per_camera is None else (
        images_per_camera if isinstance(images_per_camera, tuple) else (images_per_camera, images_per_camera))
    cameras = _BASE_CAMERAS + ((_NIR_CAMERA,) if nir_camera else ())
    appear: dict[str, list[tuple[int, int]]] = {c.name: [] for c in cameras}  # camera -> (pid, n)
    for pid in range(id_offset + 1, id_offset + identities + 1):
        rng = np.random.default_rng([seed, STREAM_ASSIGN, pid])
        # Round robin over the set's own people, so every scenario is some person's primary one.
        primary = _SCENARIO_ORDER[int(order[(pid - id_offset - 1) % len(order)])]
        for scenario in _SCENARIO_ORDER:
            cams = _SCENARIO_CAMERAS[scenario]
            if scenario == primary:
                size = int(rng.integers(2, len(cams) + 1))
            elif rng.random() < 0.75:
                size = int(rng.integers(2, len(cams) + 1)) if rng.random() < 0.85 else 1
            else:
                continue
            chosen = sorted(rng.choice(len(cams), size=size, replace=False).tolist())
            for ci in chosen:
                n = lo if lo == hi else int(rng.integers(lo, hi + 1))
                appear[cams[ci].name].append((pid, n))
            if nir_camera and scenario == _NIR_CAMERA.scenario:
                # Drawn from a stream of its own: the base cameras' plan stays as it was.
                nrng = np.random.default_rng([seed, STREAM_NIR, pid])
                if nrng.random() < _NIR_SHARE:
                    appear[_NIR_CAMERA.name].append((pid, lo if lo == hi else int(nrng.integers(lo, hi + 1))))

    plan: dict[str, list[Shot]] = {}
    for spec in cameras:
        rng = np.random.default_rng([seed, STREAM_FRAMES, spec.camnum])
        tracks = appear[spec.name]
        view_p = _camera_view_probs(seed, spec)
        shots: list[Shot] = []
        t = int(rng.integers(1, 40))
        for ti in rng.permutation(len(tracks)):
            pid, n = tracks[int(ti)]
            view = VIEWS[int(rng.choice(4, p=view_p))]
            phase = float(rng.uniform(0, 2 * math.pi))
            dphase = float(rng.uniform(0.6, 1.4))
            scale0 = float(rng.uniform(0.9, 1.0))
            frame = t
            for k in range(n):
                v = view if rng.random() > 0.15 else VIEWS[int(rng.integers(0, 4))]  # turning
                shots.append(Shot(pid, k, frame, v, phase + k * dphase, min(1.0, scale0 + 0.01 * k)))
                frame += int(rng.integers(2, 7))
            t = max(1, frame + int(rng.integers(-12, 40)))
        if shots and max(s.frame for s in shots) > MAX_FRAME:
            raise ItkmError("too many demo images for 6-digit frame numbers; use fewer identities")
        shots.sort(key=lambda s: (s.frame, s.pid))
        plan[spec.name] = shots
    return plan


def _camera_view_probs(seed: int, spec: DemoCameraSpec) -> np.ndarray:
    """Each camera has its favourite viewpoints (one sees faces, another backs)."""
    rng = np.random.default_rng([seed, STREAM_CAMERA, spec.camnum, 99])
    p = rng.dirichlet([1.5, 1.5, 1.0, 1.0]) + 0.05
    return p / p.sum()
