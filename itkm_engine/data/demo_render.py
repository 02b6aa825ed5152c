"""The demo set's procedural renderer: person crops drawn with numpy/OpenCV, filmed by cameras.

Why this exists: the app, the CLI and the tests must run anywhere, without downloading a ReID
dataset, and still exercise everything that makes UMS-ReID hard (DESIGN.md section 1).  So this
module draws person crops -- body shape, clothes, patterns, bags, hair, skin, pose and viewpoint,
crop jitter, occlusion -- and films them with cameras that differ the way real ones do:
per-camera backgrounds and lighting casts, a thermal-looking infrared camera in which colour
carries nothing (a garment's brightness there is its own 'thermal' value, unrelated to its colour),
a near-infrared camera (a grey, contrast-stretched photo of the same clothes under an infrared
lamp, as SYSU-MM01's and RegDB's infrared cameras), a low-resolution camera, and a second outfit
per person for the clothing-change camera.  It is deliberately hard enough that a colour
histogram does not solve it (see
``benchmarks/bench_demo.py``): visible colours come from a small palette (many people share
them) and are shifted by each camera's lighting.

:mod:`itkm_engine.data.demo` decides who appears where and when (a :class:`Shot` per crop) and
writes the files; here :meth:`Person.draw`, :meth:`CameraLook.build` and :func:`render_crop` turn
one shot into one BGR image.  Every random draw comes from a :class:`numpy.random.Generator`
seeded by ``(seed, STREAM_..., ...)``, so the same seed gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cv import cv2

__all__ = [
    "DemoCameraSpec",
    "Shot",
    "Person",
    "CameraLook",
    "render_crop",
    "VIEWS",
    "STREAM_PERSON",
    "STREAM_CAMERA",
    "STREAM_ASSIGN",
    "STREAM_FRAMES",
    "STREAM_IMAGE",
    "STREAM_ORDER",
    "STREAM_NIR",
]

#: Random streams: each purpose draws from its own generator seeded by ``(seed, stream, ...)``.
STREAM_PERSON, STREAM_CAMERA, STREAM_ASSIGN, STREAM_FRAMES, STREAM_IMAGE, STREAM_ORDER, STREAM_NIR = range(1, 8)
VIEWS = ("front", "back", "left", "right")


@dataclass(frozen=True)
class DemoCameraSpec:
    """One camera of the demo set: where it lives and how it films."""

    name: str
    scenario: str
    group: str
    camnum: int
    modality: str  # "visible" | "infrared" (thermal look) | "near-infrared" (grey photo of the clothes)
    base_height: int  # median crop height before the low-res downscale
    lowres: bool = False


@dataclass(frozen=True)
class Shot:
    """One crop to draw: who, the k-th crop of them in this camera, at which frame, seen from where."""

    pid: int
    index: int  # k-th crop of this person in this camera
    frame: int
    view: str
    phase: float  # walking phase (radians)
    scale: float  # track's approach: 0.9 .. 1.0 of the crop height


# ---------------------------------------------------------------------------------------------
# Identities

# Label map values: what each pixel of the drawn person is.
BG, SKIN, HAIR, TOP, TOP2, BOTTOM, SHOES, BAG, STRAP, OCC = range(10)
_N_LABELS = 10

# A small palette so different people share colours; weights follow what people wear (dark,
# neutral clothes dominate), which is what makes colour alone weak.
_TOP_COLORS = {
    "black": (28, 28, 30), "white": (222, 222, 216), "grey": (125, 125, 128), "charcoal": (64, 64, 70),
    "navy": (32, 40, 86), "blue": (52, 92, 168), "red": (168, 38, 40), "maroon": (102, 32, 44),
    "beige": (192, 172, 136), "brown": (104, 72, 48), "olive": (82, 96, 58), "green": (48, 120, 72),
    "pink": (212, 146, 164), "yellow": (214, 182, 62), "lightblue": (140, 176, 214), "orange": (212, 112, 44),
}
_TOP_WEIGHTS = {
    "black": 4, "white": 3, "grey": 3, "charcoal": 2.5, "navy": 2.5, "blue": 1.5, "red": 1, "maroon": 1,
    "beige": 1.2, "brown": 0.8, "olive": 0.8, "green": 0.7, "pink": 0.6, "yellow": 0.5, "lightblue": 1,
    "orange": 0.4,
}
_BOTTOM_COLORS = {
    "black": (26, 26, 28), "navy": (34, 40, 70), "denim": (66, 92, 132), "grey": (108, 108, 112),
    "khaki": (160, 146, 104), "beige": (190, 172, 138), "brown": (92, 66, 46), "white": (214, 214, 208),
    "olive": (78, 88, 56),
}
_BOTTOM_WEIGHTS = {"black": 4, "navy": 2, "denim": 3.5, "grey": 2, "khaki": 1.2, "beige": 0.8, "brown": 0.6,
                   "white": 0.4, "olive": 0.5}
_SHOE_COLORS = [(24, 24, 24), (226, 226, 226), (96, 66, 44), (120, 120, 124), (40, 44, 70)]
_SHOE_WEIGHTS = [4, 3, 1.5, 1, 0.7]
_HAIR_COLORS = [(22, 18, 16), (54, 38, 26), (96, 66, 40), (176, 146, 92), (150, 150, 150), (120, 52, 30)]
_HAIR_WEIGHTS = [5, 3, 1.5, 0.8, 0.6, 0.4]
_SKIN_TONES = [(242, 206, 180), (222, 178, 146), (190, 140, 104), (146, 100, 70), (96, 64, 46)]
_BAG_COLORS = [(26, 26, 28), (60, 60, 66), (34, 44, 80), (110, 76, 50), (150, 40, 40), (70, 90, 60), (200, 196, 188)]
_PATTERNS = ("plain", "stripes", "checks", "logo")
_PATTERN_WEIGHTS = (0.5, 0.2, 0.12, 0.18)
_BAGS = ("none", "backpack", "shoulder", "handbag")
_BAG_WEIGHTS = (0.4, 0.3, 0.2, 0.1)


def _pick(rng: np.random.Generator, weights) -> int:
    """Index drawn with probability proportional to ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def _jitter_rgb(rng: np.random.Generator, rgb, amount: float = 0.06) -> np.ndarray:
    c = np.asarray(rgb, dtype=np.float32) / 255.0
    return np.clip(c * (1.0 + rng.normal(0, amount, 3)) + rng.normal(0, 0.015), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Outfit:
    top: np.ndarray  # RGB 0..1
    top2: np.ndarray  # pattern colour
    pattern: str
    period: float  # stripe period, fraction of person height
    top_len: float  # how far below the hip the top reaches (coats), fraction of height
    long_sleeves: bool
    bottom: np.ndarray
    bottom_kind: str  # "trousers" | "shorts" | "skirt"
    top_name: str
    bottom_name: str
    # 'thermal' emissivity: how bright the garment is to the infrared camera, unrelated to colour
    top_ir: float
    top2_ir: float
    bottom_ir: float

    @staticmethod
    def draw(rng: np.random.Generator, avoid: "_Outfit | None" = None) -> "_Outfit":
        top_names = list(_TOP_COLORS)
        while True:
            ti = _pick(rng, [_TOP_WEIGHTS[n] for n in top_names])
            if avoid is None or top_names[ti] != avoid.top_name:
                break
        t2 = _pick(rng, [_TOP_WEIGHTS[n] for n in top_names])
        if t2 == ti:
            t2 = (t2 + 1 + int(rng.integers(0, len(top_names) - 1))) % len(top_names)
        while True:
            pattern = _PATTERNS[_pick(rng, _PATTERN_WEIGHTS)]
            if avoid is None or pattern != avoid.pattern or pattern == "plain":
                break
        bottom_names = list(_BOTTOM_COLORS)
        while True:
            bi = _pick(rng, [_BOTTOM_WEIGHTS[n] for n in bottom_names])
            if avoid is None or bottom_names[bi] != avoid.bottom_name or rng.random() < 0.3:
                break
        kinds = ("trousers", "shorts", "skirt")
        bottom_kind = kinds[_pick(rng, (0.72, 0.16, 0.12))]
        top_ir = float(rng.uniform(0.42, 0.72))
        return _Outfit(
            top=_jitter_rgb(rng, _TOP_COLORS[top_names[ti]]),
            top2=_jitter_rgb(rng, _TOP_COLORS[top_names[t2]]),
            pattern=pattern,
            period=float(rng.uniform(0.035, 0.07)),
            top_len=float(rng.uniform(0.14, 0.22)) if rng.random() < 0.15 else float(rng.uniform(-0.01, 0.05)),
            long_sleeves=bool(rng.random() < 0.6),
            bottom=_jitter_rgb(rng, _BOTTOM_COLORS[bottom_names[bi]]),
            bottom_kind=bottom_kind,
            top_name=top_names[ti],
            bottom_name=bottom_names[bi],
            top_ir=top_ir,
            top2_ir=float(np.clip(top_ir + rng.normal(0, 0.04), 0.3, 0.8)),
            bottom_ir=float(rng.uniform(0.38, 0.68)),
        )


@dataclass(frozen=True)
class Person:
    pid: int
    shoulder: float  # half shoulder width / height
    hip: float  # half hip width / height
    head: float  # head radius / height
    hip_y: float  # hip height from the top / height
    stride: float
    lean: float
    skin: np.ndarray
    skin_ir: float
    hair: np.ndarray
    hair_ir: float
    hair_style: str  # "short" | "long" | "cropped"
    shoes: np.ndarray
    shoes_ir: float
    bag: str
    bag_color: np.ndarray
    bag_ir: float
    bag_side: int  # -1 left, +1 right
    outfit: _Outfit
    alt_outfit: _Outfit
    changes_clothes: bool

    @staticmethod
    def draw(seed: int, pid: int) -> "Person":
        rng = np.random.default_rng([seed, STREAM_PERSON, pid])
        build = float(rng.normal(0, 1))
        outfit = _Outfit.draw(rng)
        return Person(
            pid=pid,
            shoulder=float(np.clip(0.145 + 0.012 * build + rng.normal(0, 0.006), 0.115, 0.18)),
            hip=float(np.clip(0.11 + 0.010 * build + rng.normal(0, 0.007), 0.085, 0.145)),
            head=float(rng.uniform(0.058, 0.076)),
            hip_y=float(rng.uniform(0.49, 0.56)),
            stride=float(rng.uniform(0.5, 1.0)),
            lean=float(rng.normal(0, 0.01)),
            skin=_jitter_rgb(rng, _SKIN_TONES[int(rng.integers(0, len(_SKIN_TONES)))], 0.04),
            skin_ir=float(rng.uniform(0.86, 0.97)),
            hair=_jitter_rgb(rng, _HAIR_COLORS[_pick(rng, _HAIR_WEIGHTS)], 0.05),
            hair_ir=float(rng.uniform(0.48, 0.66)),
            hair_style=("short", "long", "cropped")[_pick(rng, (0.55, 0.3, 0.15))],
            shoes=_jitter_rgb(rng, _SHOE_COLORS[_pick(rng, _SHOE_WEIGHTS)], 0.05),
            shoes_ir=float(rng.uniform(0.3, 0.45)),
            bag=_BAGS[_pick(rng, _BAG_WEIGHTS)],
            bag_color=_jitter_rgb(rng, _BAG_COLORS[int(rng.integers(0, len(_BAG_COLORS)))]),
            bag_ir=float(rng.uniform(0.22, 0.38)),
            bag_side=1 if rng.random() < 0.5 else -1,
            outfit=outfit,
            alt_outfit=_Outfit.draw(rng, avoid=outfit),
            changes_clothes=bool(rng.random() < 0.5),
        )


# ---------------------------------------------------------------------------------------------
# Cameras: background, lighting, optics


@dataclass
class CameraLook:
    spec: DemoCameraSpec
    background: np.ndarray  # float32 HxWx3 (visible) or HxW (infrared), 0..1, larger than any crop
    cast: np.ndarray  # per-channel gain (colour of the light)
    brightness: float
    contrast: float
    gamma: float
    blur: float  # Gaussian sigma at output size
    noise: float
    jpeg_quality: int
    light_dir: float  # -1..1 which side the light comes from
    ir_window: tuple[float, float] = (0.0, 1.0)  # infrared: output range of the scene's 0..1
    stretch: tuple[float, float] = (1.0, 99.0)  # near-infrared: auto-gain percentiles of each frame
    seed: int = 0  # the demo's seed (near-infrared reflectances are drawn per person from it)

    @staticmethod
    def build(seed: int, spec: DemoCameraSpec) -> "CameraLook":
        rng = np.random.default_rng([seed, STREAM_CAMERA, spec.camnum])
        bh = int(2 * spec.base_height * 1.3) + 8
        bw = int(bh * 0.5 * 1.5) + 8
        if spec.modality == "infrared":
            bg = _ir_background(rng, bh, bw)
            return CameraLook(
                spec, bg, np.ones(3, np.float32), 1.0, 1.0, 1.0,
                blur=float(rng.uniform(0.9, 1.2)), noise=float(rng.uniform(0.035, 0.05)),
                jpeg_quality=85, light_dir=0.0,
                ir_window=(float(rng.uniform(0.12, 0.2)), float(rng.uniform(0.62, 0.72))),
            )
        if spec.modality == "near-infrared":
            # An infrared lamp at the camera: a darker, grey scene, the person lit from the front;
            # the camera's auto-gain stretches each frame's contrast.
            vis = _visible_background(rng, bh, bw)
            grey = (vis @ np.array([0.299, 0.587, 0.114], np.float32)) * float(rng.uniform(0.55, 0.8))
            return CameraLook(
                spec, grey.astype(np.float32), np.ones(3, np.float32), 1.0, 1.0,
                gamma=float(rng.uniform(0.8, 1.0)),
                blur=float(rng.uniform(0.6, 1.0)), noise=float(rng.uniform(0.025, 0.04)),
                jpeg_quality=85, light_dir=float(rng.uniform(-0.3, 0.3)),
                stretch=(float(rng.uniform(0.5, 3.0)), float(rng.uniform(98.5, 99.8))), seed=seed,
            )
        bg = _visible_background(rng, bh, bw)
        # Strong, camera-specific light colour: the same shirt reads differently per camera.
        hue = rng.uniform(0, 2 * math.pi)
        cast = 1.0 + 0.12 * np.array([math.cos(hue), math.cos(hue - 2.1), math.cos(hue + 2.1)])
        cast = (cast / cast.mean()).astype(np.float32)
        return CameraLook(
            spec, bg, cast,
            brightness=float(rng.uniform(0.8, 1.1)),
            contrast=float(rng.uniform(0.8, 1.0)),
            gamma=float(rng.uniform(0.9, 1.12)),
            blur=float(rng.uniform(0.3, 0.8)),
            noise=float(rng.uniform(0.01, 0.03)),
            jpeg_quality=70 if spec.lowres else int(rng.choice([80, 85, 90])),
            light_dir=float(rng.uniform(-1, 1)),
        )


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int], channels: int = 0) -> np.ndarray:
    shape = cells if channels == 0 else (*cells, channels)
    small = rng.normal(0, 1, shape).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _visible_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A wall/floor scene: gradient wall, a floor line, tiles, pillars or doors, texture."""
    walls = [(0.62, 0.6, 0.56), (0.5, 0.52, 0.55), (0.58, 0.42, 0.34), (0.42, 0.48, 0.4), (0.7, 0.68, 0.62),
             (0.3, 0.32, 0.36), (0.55, 0.5, 0.42)]
    floors = [(0.36, 0.35, 0.34), (0.5, 0.46, 0.4), (0.26, 0.27, 0.3), (0.46, 0.48, 0.5), (0.4, 0.36, 0.3)]
    wall = np.array(walls[int(rng.integers(0, len(walls)))], np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    floor = np.array(floors[int(rng.integers(0, len(floors)))], np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    y_floor = int(h * rng.uniform(0.5, 0.78))
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.empty((h, w, 3), np.float32)
    grad = float(rng.uniform(-0.25, 0.25))
    img[:] = wall * (1.0 + grad * (yy - 0.5))
    img[y_floor:] = floor * (0.85 + 0.3 * yy[y_floor:])
    # vertical structures on the wall: pillars, door frames, shop windows
    for _ in range(int(rng.integers(1, 5))):
        x0 = int(rng.integers(0, w))
        bw = int(rng.integers(6, max(8, w // 4)))
        col = np.clip(wall * rng.uniform(0.5, 1.4, 3).astype(np.float32), 0, 1)
        top = int(rng.integers(0, y_floor // 2))
        img[top:y_floor, x0:x0 + bw] = col
    # floor tiles: receding horizontal lines and a few verticals
    step = int(rng.integers(10, 26))
    y = y_floor + step // 2
    while y < h:
        img[y:y + 2] *= 0.8
        step = int(step * 1.25) + 1
        y += step
    for _ in range(int(rng.integers(0, 4))):
        x = int(rng.integers(0, w))
        img[y_floor:, x:x + 2] *= 0.82
    img[max(0, y_floor - 2):y_floor + 1] *= 0.6  # skirting / floor line
    # texture: mostly brightness (stains, light falloff), a little colour
    img *= (1.0 + 0.09 * _lowfreq(rng, h, w, (6, 4)))[:, :, None] + 0.025 * _lowfreq(rng, h, w, (6, 4), 3)
    img += 0.025 * _lowfreq(rng, h, w, (h // 4, w // 4))[:, :, None] + 0.008 * _lowfreq(rng, h, w, (h // 4, w // 4), 3)
    return np.clip(img, 0.0, 1.0)


def _ir_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cool, dark, low-texture scene; sometimes a warm object (lamp, radiator)."""
    base = float(rng.uniform(0.14, 0.26))
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    img = base + float(rng.uniform(-0.06, 0.06)) * (yy - 0.5) + np.zeros((h, w), np.float32)
    y_floor = int(h * rng.uniform(0.55, 0.78))
    img[y_floor:] += float(rng.uniform(0.02, 0.06))
    img += 0.04 * _lowfreq(rng, h, w, (6, 4))
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, y_floor))
        cv2.circle(img, (cx, cy), int(rng.integers(3, 10)), float(rng.uniform(0.4, 0.6)), -1)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 2.0), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Drawing one crop


def _ip(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _draw_person(lab: np.ndarray, person: Person, outfit: _Outfit, shot: Shot, view: str,
                 rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Draw ``person`` into the label map ``lab``; returns (cx, top, height, half shoulder width)."""
    H, W = lab.shape
    top = H * rng.uniform(0.015, 0.07)
    bottom = H * (1.0 - rng.uniform(0.01, 0.05))
    P = (bottom - top) * shot.scale
    top = bottom - P
    side = view in ("left", "right")
    facing = 1.0 if view == "right" else -1.0  # side views: direction of walking
    wf = 0.58 if side else 1.0
    cx = W / 2 + W * rng.normal(0, 0.04) + person.lean * P
    hr = person.head * P
    sw = person.shoulder * P * wf
    hw = person.hip * P * wf
    neck_y = top + 2 * hr
    sh_y = neck_y + 0.025 * P
    hip_y = top + person.hip_y * P
    foot_y = top + P
    shoe_h = 0.03 * P
    ankle_y = foot_y - shoe_h
    knee_y = (hip_y + ankle_y) / 2
    leg_w = max(2, int(round(hw * (1.0 if side else 0.9))))
    arm_w = max(2, int(round(0.055 * P)))
    swing = math.sin(shot.phase) * person.stride

    def legs(label_upper: int, label_lower: int) -> None:
        if side:
            dx = swing * 0.17 * P
            for ax in (cx + dx * facing, cx - dx * facing):
                kx = (cx + ax) / 2 + 0.02 * P * facing
                cv2.line(lab, _ip(cx, hip_y), _ip(kx, knee_y), label_upper, leg_w)
                cv2.line(lab, _ip(kx, knee_y), _ip(ax, ankle_y), label_lower, leg_w)
                cv2.ellipse(lab, _ip(ax + 0.02 * P * facing, ankle_y + shoe_h / 2),
                            (max(2, int(0.05 * P)), max(1, int(shoe_h * 0.7))), 0, 0, 360, SHOES, -1)
        else:
            lift = 0.02 * P * swing
            for sgn, dy in ((-1, lift), (1, -lift)):
                hx = cx + sgn * hw * 0.5
                ax = cx + sgn * hw * (0.55 + 0.08 * abs(swing))
                ay = ankle_y - max(0.0, dy)
                cv2.line(lab, _ip(hx, hip_y), _ip((hx + ax) / 2, knee_y), label_upper, leg_w)
                cv2.line(lab, _ip((hx + ax) / 2, knee_y), _ip(ax, ay), label_lower, leg_w)
                cv2.ellipse(lab, _ip(ax, ay + shoe_h / 2), (max(2, int(leg_w * 0.65)), max(1, int(shoe_h * 0.7))),
                            0, 0, 360, SHOES, -1)

    def arm(shoulder_x: float, hand_dx: float, upper: int) -> None:
        sx, sy = shoulder_x, sh_y + arm_w * 0.5
        hx, hy = shoulder_x + hand_dx, sh_y + 0.34 * P
        ex, ey = (sx + hx) / 2, (sy + hy) / 2
        cv2.line(lab, _ip(sx, sy), _ip(ex, ey), upper, arm_w)
        cv2.line(lab, _ip(ex, ey), _ip(hx, hy), TOP if outfit.long_sleeves else SKIN, arm_w)
        cv2.circle(lab, _ip(hx, hy + arm_w * 0.3), max(1, int(arm_w * 0.6)), SKIN, -1)

    def bag_body(behind: bool) -> None:
        if person.bag == "backpack":
            if view == "back" and not behind:
                x0, x1 = cx - sw * 0.75, cx + sw * 0.75
                cv2.rectangle(lab, _ip(x0, sh_y + 0.03 * P), _ip(x1, hip_y - 0.02 * P), BAG, -1)
                cv2.rectangle(lab, _ip(x0 + 0.1 * (x1 - x0), hip_y - 0.12 * P),
                              _ip(x1 - 0.1 * (x1 - x0), hip_y - 0.04 * P), STRAP, 1)
            elif side and behind:
                bx = cx - facing * (sw + 0.04 * P)
                cv2.rectangle(lab, _ip(bx - 0.05 * P, sh_y + 0.02 * P), _ip(bx + 0.05 * P, hip_y - 0.03 * P), BAG, -1)
        elif person.bag == "shoulder" and not behind:
            bx = cx + person.bag_side * (sw + 0.02 * P) * (0.4 if side else 1.0)
            cv2.rectangle(lab, _ip(bx - 0.045 * P, hip_y - 0.03 * P), _ip(bx + 0.045 * P, hip_y + 0.06 * P), BAG, -1)
        elif person.bag == "handbag" and not behind and not (side and person.bag_side != facing):
            hx = cx + person.bag_side * (sw + arm_w * 0.4) if not side else cx + swing * 0.08 * P * facing
            cv2.rectangle(lab, _ip(hx - 0.035 * P, sh_y + 0.35 * P), _ip(hx + 0.035 * P, sh_y + 0.43 * P), BAG, -1)

    def straps() -> None:
        t = max(1, int(round(0.018 * P)))
        if person.bag == "backpack":
            if view == "front":
                for s in (-1, 1):
                    cv2.line(lab, _ip(cx + s * sw * 0.55, sh_y), _ip(cx + s * sw * 0.5, sh_y + 0.15 * P), STRAP, t)
            elif side:
                cv2.line(lab, _ip(cx - facing * 0.01 * P, sh_y), _ip(cx - facing * 0.02 * P, sh_y + 0.16 * P), STRAP, t)
        elif person.bag == "shoulder":
            if side:
                cv2.line(lab, _ip(cx, sh_y), _ip(cx + person.bag_side * 0.03 * P, hip_y - 0.03 * P), STRAP, t)
            else:
                cv2.line(lab, _ip(cx - person.bag_side * sw * 0.8, sh_y),
                         _ip(cx + person.bag_side * (sw + 0.02 * P), hip_y - 0.02 * P), STRAP, t)

    # --- back-most parts
    if person.hair_style == "long" and view != "front":
        cv2.rectangle(lab, _ip(cx - hr * 0.85, top + hr), _ip(cx + hr * 0.85, sh_y + 0.1 * P), HAIR, -1)
    bag_body(behind=True)
    if side:  # far arm, behind the body
        arm(cx, -swing * 0.1 * P * facing, TOP)

    # --- legs and lower garment
    if outfit.bottom_kind == "trousers":
        legs(BOTTOM, BOTTOM)
    elif outfit.bottom_kind == "shorts":
        legs(BOTTOM, SKIN)
    else:  # skirt: legs skin, trapezoid over them
        legs(SKIN, SKIN)
        kw = hw * 1.35
        cv2.fillPoly(lab, [np.array([_ip(cx - hw, hip_y - 0.02 * P), _ip(cx + hw, hip_y - 0.02 * P),
                                     _ip(cx + kw, knee_y + 0.02 * P), _ip(cx - kw, knee_y + 0.02 * P)])], BOTTOM)
    cv2.fillPoly(lab, [np.array([_ip(cx - hw, hip_y - 0.03 * P), _ip(cx + hw, hip_y - 0.03 * P),
                                 _ip(cx + hw * 0.95, hip_y + 0.07 * P), _ip(cx - hw * 0.95, hip_y + 0.07 * P)])], BOTTOM)

    # --- torso (top garment) and neck
    cv2.line(lab, _ip(cx, neck_y - hr * 0.4), _ip(cx, sh_y + 2), SKIN, max(2, int(hr * 0.8)))
    top_end = hip_y + outfit.top_len * P
    flare = 1.0 + 2.0 * max(0.0, outfit.top_len)
    torso = np.array([_ip(cx - sw, sh_y + 0.02 * P), _ip(cx - sw * 0.85, sh_y), _ip(cx + sw * 0.85, sh_y),
                      _ip(cx + sw, sh_y + 0.02 * P), _ip(cx + hw * flare, top_end), _ip(cx - hw * flare, top_end)])
    cv2.fillPoly(lab, [torso], TOP)
    # patterns: stripes / checks over the whole top (sleeves included), a logo on the chest
    if outfit.pattern in ("stripes", "checks"):
        period = max(3.0, outfit.period * P)
        ys = np.arange(H, dtype=np.float32)[:, None]
        xs = np.arange(W, dtype=np.float32)[None, :]
        on = ((ys - sh_y) // (period / 2)) % 2 == 1
        if outfit.pattern == "checks":
            on = on ^ ((((xs - cx) // (period / 2)) % 2) == 1)
        lab[(lab == TOP) & on] = TOP2
    if outfit.pattern == "logo" and view != "back":
        lx = cx + (0.0 if not side else facing * sw * 0.3)
        cv2.ellipse(lab, _ip(lx, sh_y + 0.12 * P), (max(2, int(sw * (0.32 if not side else 0.25))), max(2, int(0.04 * P))),
                    0, 0, 360, TOP2, -1)
    bag_body(behind=False)
    straps()

    # --- arms (front/back: at the sides, swinging slightly; side: the near arm swings)
    if side:
        arm(cx, swing * 0.1 * P * facing, TOP)
    else:
        for s in (-1, 1):
            arm(cx + s * (sw - arm_w * 0.3), s * 0.02 * P + s * 0.01 * P * swing, TOP)
    if outfit.pattern in ("stripes", "checks"):
        lab[(lab == TOP) & on] = TOP2

    # --- head and hair
    hc = _ip(cx + (0.01 * P * facing if side else 0.0), top + hr)
    axes = (max(2, int(hr * 0.82)), max(2, int(hr)))
    cv2.ellipse(lab, hc, axes, 0, 0, 360, SKIN, -1)
    if view == "back":
        cv2.ellipse(lab, hc, axes, 0, 0, 360, HAIR, -1)
        if person.hair_style == "cropped":
            cv2.ellipse(lab, _ip(hc[0], hc[1] + hr * 0.55), (axes[0] - 1, int(hr * 0.45)), 0, 0, 180, SKIN, -1)
    else:
        cap = 0.55 if person.hair_style == "cropped" else 0.9
        cv2.ellipse(lab, (hc[0], hc[1] + 1), (axes[0] + 1, int(axes[1] * cap) + 1), 0, 180, 360, HAIR, -1)
        if side:  # the back of the head
            cv2.ellipse(lab, hc, (axes[0] + 1, axes[1]), 0, 90 if facing > 0 else -90, 270 if facing > 0 else 90,
                        HAIR, -1)
        if person.hair_style == "long":
            for s in (-1, 1) if not side else (-facing,):
                cv2.line(lab, _ip(cx + s * hr * 0.8, top + hr), _ip(cx + s * hr * 0.75, sh_y + 0.06 * P), HAIR,
                         max(2, int(hr * 0.35)))
    return cx, top, P, sw


def _occlude(lab: np.ndarray, rng: np.random.Generator) -> None:
    """Sometimes something stands in front of the person: a pole, a bench, another passer-by."""
    H, W = lab.shape
    kind = int(rng.integers(0, 3))
    if kind == 0:  # bottom: bench, car, railing
        y0 = int(H * rng.uniform(0.62, 0.82))
        lab[y0:, :] = OCC
    elif kind == 1:  # side: another person or a door frame
        w = int(W * rng.uniform(0.18, 0.35))
        if rng.random() < 0.5:
            lab[:, :w] = OCC
        else:
            lab[:, W - w:] = OCC
    else:  # a pole
        x = int(W * rng.uniform(0.2, 0.8))
        lab[:, max(0, x - W // 14): x + W // 14] = OCC


def _nir_reflectance(seed: int, person: Person, outfit: _Outfit, occ: np.ndarray) -> np.ndarray:
    """Grey level of each label-map value under near-infrared light.

    The clothes' visible luminance pattern survives (light shirt over dark trousers stays so), but
    compressed toward the middle -- dark dyes reflect infrared -- and shifted a little per garment
    (dye-dependent), the same shift in every near-infrared crop of that garment.  Skin reads
    bright whatever its tone."""
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    shift = np.random.default_rng([seed, STREAM_NIR, person.pid, 1]).normal(0, 0.06, _N_LABELS)

    def g(rgb) -> float:
        return float(np.asarray(rgb, np.float32) @ luma)

    cloth = [g(person.hair), g(outfit.top), g(outfit.top2), g(outfit.bottom), g(person.shoes), g(person.bag_color),
             g(person.bag_color * 0.7)]
    out = np.zeros(_N_LABELS, np.float32)
    out[SKIN] = 0.62 + 0.2 * g(person.skin)
    out[[HAIR, TOP, TOP2, BOTTOM, SHOES, BAG, STRAP]] = [0.14 + 0.74 * v ** 0.8 for v in cloth]
    out[OCC] = 0.14 + 0.74 * g(occ) ** 0.8
    return np.clip(out + shift.astype(np.float32), 0.03, 0.97)


def _render_nir(cam: CameraLook, person: Person, outfit: _Outfit, occ: np.ndarray, lab: np.ndarray, mask: np.ndarray,
                bg: np.ndarray, shadow: np.ndarray, shade: np.ndarray, size: tuple[int, int],
                rng: np.random.Generator) -> np.ndarray:
    """A near-infrared crop: the scene's grey reflectance under a lamp at the camera (brightest at
    the centre of the frame), the frame's contrast auto-stretched, slight blur and sensor noise."""
    h, w = size
    H, W = lab.shape
    lut = _nir_reflectance(cam.seed, person, outfit, occ)  # the same in every near-infrared camera
    scene = bg * shadow
    scene[mask] = lut[lab[mask]] * (0.85 + 0.15 * shade[mask])
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    lamp = 1.0 - 0.25 * (((xx - W / 2) / W) ** 2 + 0.5 * ((yy - H / 2) / H) ** 2) * 4.0
    scene = scene * np.clip(lamp, 0.4, 1.0) * float(np.exp(rng.normal(0, 0.08)))
    scene = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(scene, cam.stretch)
    img = np.clip((scene - lo) / max(float(hi - lo), 1e-3), 0.0, 1.0) ** cam.gamma
    img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    img = img + rng.normal(0, cam.noise, img.shape).astype(np.float32)
    grey = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.merge([grey, grey, grey])


def render_crop(cam: CameraLook, person: Person, outfit: _Outfit, shot: Shot, rng: np.random.Generator) -> np.ndarray:
    """One crop as a BGR uint8 image (3 equal channels for the infrared cameras)."""
    spec = cam.spec
    h = int(round(spec.base_height * math.exp(rng.normal(0, 0.07))))
    w = max(8, int(round(h * 0.5 * math.exp(rng.normal(0, 0.06)))))
    H, W = 2 * h, 2 * w
    bh, bw = cam.background.shape[:2]
    H, W = min(H, bh), min(W, bw)
    oy, ox = int(rng.integers(0, bh - H + 1)), int(rng.integers(0, bw - W + 1))
    bg = cam.background[oy:oy + H, ox:ox + W]

    lab = np.zeros((H, W), np.uint8)
    cx, top, P, sw = _draw_person(lab, person, outfit, shot, shot.view, rng)
    if rng.random() < 0.15:
        _occlude(lab, rng)
    mask = lab > 0
    # horizontal shading: round body, light from one side
    xs = (np.arange(W, dtype=np.float32) - cx) / max(sw * 1.4, 1.0)
    shade_x = np.clip(1.0 + 0.12 * cam.light_dir * xs - 0.22 * xs * xs, 0.55, 1.2)
    ys = (np.arange(H, dtype=np.float32) - top) / max(P, 1.0)
    shade_y = np.clip(1.05 - 0.15 * ys, 0.8, 1.1)
    shade = shade_y[:, None] * shade_x[None, :]
    # feet shadow on the floor
    shadow = np.ones((H, W), np.float32)
    cv2.ellipse(shadow, _ip(cx, top + P), (max(2, int(sw * 1.6)), max(1, int(0.025 * P))), 0, 0, 360, 0.6, -1)

    if spec.modality == "infrared":
        lut = np.array([0.0, person.skin_ir, person.hair_ir, outfit.top_ir, outfit.top2_ir, outfit.bottom_ir,
                        person.shoes_ir, person.bag_ir, person.bag_ir * 1.1, rng.uniform(0.2, 0.45)], np.float32)
        scene = bg * (0.85 + 0.15 * shadow)
        scene[mask] = lut[lab[mask]] * (0.9 + 0.1 * shade[mask])
        scene = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)
        lo, hi = cam.ir_window
        img = lo + (hi - lo) * scene * rng.uniform(0.92, 1.08)
        img = cv2.GaussianBlur(img, (0, 0), cam.blur)
        img = img + rng.normal(0, cam.noise, img.shape).astype(np.float32)
        grey = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return cv2.merge([grey, grey, grey])

    occ = _jitter_rgb(rng, _TOP_COLORS[list(_TOP_COLORS)[int(rng.integers(0, len(_TOP_COLORS)))]], 0.1)
    if spec.modality == "near-infrared":
        return _render_nir(cam, person, outfit, occ, lab, mask, bg, shadow, shade, (h, w), rng)
    lut = np.stack([np.zeros(3, np.float32), person.skin, person.hair, outfit.top, outfit.top2, outfit.bottom,
                    person.shoes, person.bag_color, person.bag_color * 0.7, occ]).astype(np.float32)
    scene = bg * shadow[:, :, None]
    scene[mask] = lut[lab[mask]] * shade[mask][:, None]
    scene = cv2.resize(scene, (w, h), interpolation=cv2.INTER_AREA)
    # lighting: camera cast with per-frame drift, brightness, contrast, gamma
    gain = cam.cast * cam.brightness * np.exp(rng.normal(0, 0.05)) * (1.0 + rng.normal(0, 0.03, 3))
    img = scene * gain.astype(np.float32)[None, None, :]
    mean = float(img.mean())
    img = (img - mean) * cam.contrast * math.exp(rng.normal(0, 0.05)) + mean
    img = np.clip(img, 0.0, 1.0) ** cam.gamma
    img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    if spec.lowres:
        lh = max(12, int(round(h / 4 * math.exp(rng.normal(0, 0.08)))))
        lw = max(6, int(round(lh * w / h)))
        img = cv2.GaussianBlur(img, (0, 0), 1.2)
        img = cv2.resize(img, (lw, lh), interpolation=cv2.INTER_AREA)
    img = img + rng.normal(0, cam.noise, img.shape).astype(np.float32)
    rgb = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
