"""Image files and bytes for the tests: person-like crops, plain and noisy images, and the
pieces of hostile files (a PNG chunk, a PNG whose header claims a decompression bomb's size)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(w: int = 32, h: int = 64, color=(200, 40, 40), mode: str = "RGB", quality: int = 90, **save) -> bytes:
    """A plain ``w`` x ``h`` JPEG of one colour."""
    buf = io.BytesIO()
    Image.new(mode, (w, h), color).save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def noisy_png_bytes(w: int = 48, h: int = 96, seed: int = 0) -> bytes:
    """A PNG of random pixels (nothing for a codec to squeeze)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def person_crop(h: int, w: int, rng: np.random.Generator, *, grey: bool = False) -> np.ndarray:
    """A crude person crop: coloured shirt/trousers on a coloured background (or all grey)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rng.integers(40, 200, 3)
    img[h // 5 : h // 2, w // 4 : 3 * w // 4] = rng.integers(0, 255, 3)
    img[h // 2 :, w // 4 : 3 * w // 4] = rng.integers(0, 255, 3)
    img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)
    if grey:
        img[:] = img.mean(axis=2, keepdims=True).astype(np.uint8)
    return img


def jpeg_of(arr: np.ndarray, quality: int = 90) -> bytes:
    """An RGB array as JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with a valid CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (valid CRC) claims a huge size: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def put(path: Path, data: bytes) -> Path:
    """Write ``data`` at ``path``, making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
