"""Guess each camera's scenario and group from its pixels (never from identity labels).

DESIGN.md: "The scenario and group of an image are known from its camera ... The app guesses
them (infrared: almost no colour saturation; low-res: median crop height well below the others)
and the operator can correct them per camera."

* :func:`guess_camera` looks at a random sample of a camera's crops, decoded as small thumbnails:
  the HSV saturation of each crop (over pixels that are not near-black, where saturation is pure
  noise) says whether it is grey.  A camera whose crops are nearly all grey is *infrared*; one that
  has both clearly colour and grey crops (a day/night camera) is *mixed* -- flagged for the
  operator, not split, because a camera's group is one value.
* :func:`assign_scenarios` turns the per-camera guesses of one source into (scenario, group,
  flag) per camera, with or without a scenario the user (or the folder layout) already named.
  A low-res camera in a scenario without resolution groups keeps its group and gets a flag.

Thresholds are module constants so tests and the docs can name them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..cv import cv2
import numpy as np

from .imageio import BadImage, load_rgb, read_header
from ..vocabulary import FLAG_SEPARATOR, LOW_RES_FLAG, SCENARIOS, TWO_GROUP

__all__ = [
    "CameraGuess",
    "guess_camera",
    "assign_scenarios",
    "crop_saturation",
    "GREY_SATURATION",
    "COLOUR_SATURATION",
    "INFRARED_FRACTION",
    "MIXED_FRACTION",
    "LOW_RES_RATIO",
    "MIXED_FLAG",
    "LOW_RES_FLAG",
]

#: A crop whose mean saturation (0..1) is below this is grey (infrared-like).  JPEG chroma noise on
#: a truly grey image stays well under 0.03; the greyest real colour crops sit around 0.08-0.1.
GREY_SATURATION = 0.06
#: A crop whose mean saturation is above this is clearly colour.
COLOUR_SATURATION = 0.12
#: A camera is infrared when at least this fraction of its sampled crops is grey.
INFRARED_FRACTION = 0.9
#: A camera is mixed when at least this fraction is grey *and* this fraction clearly colour.
MIXED_FRACTION = 0.15
#: A camera is low-res when its median crop height is below this times the median of the other
#: cameras' median heights.
LOW_RES_RATIO = 0.6
#: Pixels darker than this (V channel, 0..255) are left out of the saturation mean.
_DARK_V = 24
#: Thumbnail size for the guess: saturation does not need more.
_THUMB = 64

MIXED_FLAG = "mixed visible and grey crops"


@dataclass(frozen=True)
class CameraGuess:
    """What a sample of a camera's crops looks like.

    ``median_height`` is of the sampled crops' original heights (ingestion replaces it with the
    median over all the camera's images, which it knows from the headers).
    """

    infrared: bool
    mixed: bool
    mean_saturation: float
    grey_fraction: float
    median_height: float
    colour_fraction: float = 0.0
    sampled: int = 0  # crops actually decoded (unreadable ones are skipped)


def crop_saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation (0..1) of an RGB uint8 crop over its not-near-black pixels."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    s = hsv[:, :, 1].astype(np.float32)
    lit = hsv[:, :, 2] > _DARK_V
    if lit.sum() < 16:  # an all-dark crop: no colour information either way
        return 0.0
    return float(s[lit].mean() / 255.0)


def guess_camera(
    paths: Sequence[str | os.PathLike],
    sample: int = 32,
    seed: int = 0,
    *,
    median_height: float | None = None,
) -> CameraGuess:
    """Guess infrared / mixed and the median crop height from a random sample of ``paths``.

    Deterministic for a given set of paths and ``seed`` (paths are sorted before sampling).
    Unreadable images are skipped; a camera with no readable image gets a neutral guess
    (not infrared, not mixed, ``sampled == 0``).  ``median_height``: when the caller already
    knows it (ingestion has every header), it is used as is and no header is read again.
    """
    ordered = sorted(paths, key=os.fsencode)
    rng = np.random.default_rng(seed)
    if len(ordered) > sample:
        pick = np.sort(rng.choice(len(ordered), size=sample, replace=False))
        ordered = [ordered[i] for i in pick]
    sats: list[float] = []
    heights: list[int] = []
    for p in ordered:
        try:
            if median_height is None:
                heights.append(read_header(p).height)
            thumb = load_rgb(p, max_side=_THUMB)
        except BadImage:
            if median_height is None and len(heights) > len(sats):
                heights.pop()
            continue
        sats.append(crop_saturation(thumb))
    if not sats:
        return CameraGuess(False, False, 0.0, 0.0, float(median_height or 0.0), 0.0, 0)
    s = np.asarray(sats)
    grey = float(np.mean(s < GREY_SATURATION))
    colour = float(np.mean(s > COLOUR_SATURATION))
    infrared = grey >= INFRARED_FRACTION
    mixed = (not infrared) and grey >= MIXED_FRACTION and colour >= MIXED_FRACTION
    return CameraGuess(
        infrared=infrared,
        mixed=mixed,
        mean_saturation=float(s.mean()),
        grey_fraction=grey,
        median_height=float(median_height) if median_height is not None else float(np.median(heights)),
        colour_fraction=colour,
        sampled=len(sats),
    )


def _low_res(cameras: Mapping[str, CameraGuess]) -> dict[str, float]:
    """Cameras whose median height is below LOW_RES_RATIO x the median of the others' medians,
    with that median of the others (what they were compared with)."""
    out: dict[str, float] = {}
    heights = {n: g.median_height for n, g in cameras.items() if g.sampled > 0 and g.median_height > 0}
    for name, h in heights.items():
        others = [v for n, v in heights.items() if n != name]
        if others and h < LOW_RES_RATIO * float(np.median(others)):
            out[name] = float(np.median(others))
    return out


def assign_scenarios(
    cameras: Mapping[str, CameraGuess], scenario_hint: str | None = None
) -> dict[str, tuple[str, str, str | None]]:
    """(scenario, group, flag or None) for every camera of one source.

    With ``scenario_hint`` (``--scenario``, or a scenario folder) the scenario is given and only
    the group is guessed: visible-infrared -> ``infrared`` for infrared cameras else ``visible``;
    cross-resolution -> ``low-res`` for low-res outliers else ``high-res``; other scenarios ->
    ``all``.  Without a hint the whole source gets one scenario: visible-infrared if any camera is
    infrared, else cross-resolution if a low-res outlier exists, else cross-camera.

    A low-res outlier in a scenario without resolution groups (visible-infrared, cross-camera,
    clothing-change) keeps its group and is flagged (:data:`LOW_RES_FLAG`, with its median height
    and the others'), not moved to cross-resolution: a camera has one scenario, and alone in
    cross-resolution it would be a low-res group without a high-res side, clustered apart from the
    visible (or infrared) cameras that see the same people -- its crops would never join their
    identities.  In its own group its people cluster with the same modality; the flag tells the
    operator, who can still move it in the Cameras view.

    Flags: :data:`MIXED_FLAG` for a mixed camera; the low-res flag; both joined by "; ";
    "no readable images" when nothing could be sampled.
    """
    if scenario_hint is not None and scenario_hint not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario_hint!r}; choose one of {', '.join(SCENARIOS)}")
    low = _low_res(cameras)
    scenario = scenario_hint
    if scenario is None:
        if any(g.infrared for g in cameras.values()):
            scenario = "visible-infrared"
        elif low:
            scenario = "cross-resolution"
        else:
            scenario = "cross-camera"
    out: dict[str, tuple[str, str, str | None]] = {}
    for name, g in cameras.items():
        if scenario == "visible-infrared":
            group = "infrared" if g.infrared else "visible"
        elif scenario == "cross-resolution":
            group = "low-res" if name in low else "high-res"
        else:
            group = TWO_GROUP.get(scenario, ("all",))[0]
        flags = []
        if g.sampled == 0:
            flags.append("no readable images")
        elif g.mixed:
            flags.append(MIXED_FLAG)
        if name in low and scenario != "cross-resolution":
            flags.append(f"{LOW_RES_FLAG} ({g.median_height:.0f} px median height vs {low[name]:.0f} px "
                         f"for the other cameras): kept in the {group} group")
        out[name] = (scenario, group, FLAG_SEPARATOR.join(flags) or None)
    return out
