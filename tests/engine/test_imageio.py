"""Hostile and unusual image files: every one becomes BadImage with a reason, or a correct RGB array."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from itkm_engine.data import imageio
from itkm_engine.data.imageio import BadImage, load_rgb, probe, read_header, relpath_to_text, text_to_relpath
from itkm_engine.errors import ItkmError

from helpers.images import jpeg_bytes as _jpeg_bytes
from helpers.images import noisy_png_bytes as _noisy_png_bytes
from helpers.images import png_claiming as _png_claiming

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _reason(fn, path) -> str:
    with pytest.raises(BadImage) as info:
        fn(path)
    assert isinstance(info.value, ItkmError)
    assert info.value.reason and len(info.value.reason) < 100
    return info.value.reason


# -- good files -------------------------------------------------------------------------------


def test_header_of_a_jpeg_without_decoding(tmp_path):
    p = _write(tmp_path / "a.jpg", _jpeg_bytes(32, 64))
    h = read_header(p)
    assert (h.width, h.height, h.mode, h.format) == (32, 64, "RGB", "JPEG")
    header, st = probe(p)
    assert header == h and st.st_size == p.stat().st_size


def test_load_rgb_jpeg(tmp_path):
    p = _write(tmp_path / "a.JPG", _jpeg_bytes(32, 64, (200, 40, 40)))
    a = load_rgb(p)
    assert a.shape == (64, 32, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert abs(int(a[30, 15, 0]) - 200) < 8 and int(a[30, 15, 1]) < 60


def test_max_side_thumbnail(tmp_path):
    p = _write(tmp_path / "big.jpg", _jpeg_bytes(100, 400))
    a = load_rgb(p, max_side=64)
    assert max(a.shape[:2]) <= 64 and a.shape[2] == 3
    p2 = _write(tmp_path / "big.png", _noisy_png_bytes(50, 200))
    assert max(load_rgb(p2, max_side=64).shape[:2]) <= 64


def test_cmyk_jpeg(tmp_path):
    p = _write(tmp_path / "cmyk.jpg", _jpeg_bytes(24, 40, (0, 255, 255, 0), mode="CMYK"))
    assert read_header(p).mode == "CMYK"
    a = load_rgb(p)
    assert a.shape == (40, 24, 3)
    r, g, b = (int(v) for v in a[20, 12])
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full -> red


def test_16bit_png_scaled_to_8bit(tmp_path):
    arr = np.full((40, 20), 65535, np.uint16)
    arr[:, :10] = 257 * 100
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert read_header(tmp_path / "g16.png").mode.startswith("I")
    a = load_rgb(tmp_path / "g16.png")
    assert a.shape == (40, 20, 3)
    assert int(a[0, 0, 0]) == 100 and int(a[0, 15, 0]) == 255
    assert (a[:, :, 0] == a[:, :, 2]).all()


def test_float_and_int32_images(tmp_path):
    f = np.linspace(0.0, 1.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")  # TIFF content under a supported name
    os.rename(tmp_path / "f.tif", tmp_path / "f.png")
    a = load_rgb(tmp_path / "f.png")
    assert a[0, 0, 0] == 0 and a[-1, -1, 0] == 255
    assert imageio._to_uint8(np.array([[0, 300000]], np.int32)).tolist() == [[0, 255]]
    assert imageio._to_uint8(np.array([[0, 200]], np.int32)).tolist() == [[0, 200]]


def test_palette_png_with_transparency(tmp_path):
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 255] + [255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))
    im.info["transparency"] = 0  # index 0 (blue) is transparent
    im.save(tmp_path / "p.png", transparency=0)
    a = load_rgb(tmp_path / "p.png")
    assert a[5, 2].tolist() == [255, 0, 0]
    assert a[5, 12].tolist() == [128, 128, 128]  # transparent -> grey matte
    im2 = Image.new("P", (16, 16), 1)
    im2.putpalette([0, 0, 255] + [10, 200, 30] + [0] * 762)
    im2.save(tmp_path / "p2.png")
    assert load_rgb(tmp_path / "p2.png")[0, 0].tolist() == [10, 200, 30]


def test_rgba_and_la_composited_over_grey(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (255, 0, 0, 255)
    rgba[:, 8:] = (0, 255, 0, 0)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_rgb(tmp_path / "a.png")
    assert a[0, 0].tolist() == [255, 0, 0] and a[0, 12].tolist() == [128, 128, 128]
    Image.new("LA", (16, 16), (255, 0)).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png")[3, 3].tolist() == [128, 128, 128]


def test_greyscale_and_bilevel_replicated(tmp_path):
    Image.new("L", (16, 32), 77).save(tmp_path / "l.png")
    assert load_rgb(tmp_path / "l.png")[0, 0].tolist() == [77, 77, 77]
    Image.new("1", (16, 32), 1).save(tmp_path / "b.bmp")
    assert load_rgb(tmp_path / "b.bmp")[0, 0].tolist() == [255, 255, 255]


def test_webp_and_bmp(tmp_path):
    Image.new("RGB", (16, 32), (1, 2, 3)).save(tmp_path / "x.bmp")
    assert read_header(tmp_path / "x.bmp").format == "BMP"
    Image.new("RGB", (16, 32), (10, 200, 10)).save(tmp_path / "x.webp", lossless=True)
    assert load_rgb(tmp_path / "x.webp")[0, 0].tolist() == [10, 200, 10]


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    p = _write(tmp_path / "rot.jpg", buf.getvalue())
    assert read_header(p)[:2] == (40, 20)  # the header reports stored size
    assert load_rgb(p).shape == (40, 20, 3)  # decoded upright


# -- hostile files ----------------------------------------------------------------------------


def test_zero_byte(tmp_path):
    p = _write(tmp_path / "z.jpg", b"")
    assert "empty" in _reason(read_header, p)
    assert "empty" in _reason(load_rgb, p)


def test_text_file_named_jpg(tmp_path):
    p = _write(tmp_path / "t.jpg", b"hello, this is not a picture\n" * 4)
    assert "not an image" in _reason(read_header, p)


def test_random_bytes(tmp_path):
    p = _write(tmp_path / "r.png", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not an image" in _reason(read_header, p)


def test_corrupt_bytes_inside_a_jpeg(tmp_path):
    data = bytearray(_jpeg_bytes(64, 128))
    data[2:40] = b"\x00" * 38  # wreck the markers after SOI
    p = _write(tmp_path / "c.jpg", bytes(data))
    reason = _reason(read_header, p)
    assert "JPEG" in reason or "corrupt" in reason


def test_truncated_header(tmp_path):
    p = _write(tmp_path / "h.jpg", _jpeg_bytes()[:12])
    assert "truncated" in _reason(read_header, p) or "corrupt" in _reason(read_header, p)
    p2 = _write(tmp_path / "h.png", _noisy_png_bytes()[:20])
    assert "PNG" in _reason(read_header, p2)


def test_truncated_jpeg_body_found_at_load(tmp_path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    p = _write(tmp_path / "t.jpg", data[: len(data) // 2])
    assert read_header(p)[:2] == (64, 128)  # header is fine ...
    assert "truncated" in _reason(load_rgb, p)  # ... the body is not


def test_truncated_png_body_found_at_load(tmp_path):
    data = _noisy_png_bytes()
    p = _write(tmp_path / "t.png", data[: len(data) // 2])
    assert read_header(p)[:2] == (48, 96)
    assert "truncated" in _reason(load_rgb, p)


def test_load_refuses_when_truncated_loading_enabled(tmp_path, monkeypatch):
    p = _write(tmp_path / "a.jpg", _jpeg_bytes())
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_rgb(p)


def test_tiny_images_rejected(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    assert "too small" in _reason(read_header, tmp_path / "one.png")
    Image.new("RGB", (7, 100)).save(tmp_path / "thin.png")
    assert "too small" in _reason(load_rgb, tmp_path / "thin.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert read_header(tmp_path / "ok.png")[:2] == (8, 8)


def test_decompression_bomb_header_refused(tmp_path):
    p = _write(tmp_path / "bomb.png", _png_claiming(100_000, 100_000))
    assert p.stat().st_size < 200
    assert "too large" in _reason(read_header, p)
    assert "too large" in _reason(load_rgb, p)
    # Between our limit (64 MP) and Pillow's own warning threshold: refused by us, no warning.
    p2 = _write(tmp_path / "bomb2.png", _png_claiming(9000, 9000))
    with _no_warnings():
        assert "too large" in _reason(read_header, p2)
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    with pytest.raises(BadImage, match="too large"):
        read_header(tmp_path / "small.png", max_pixels=1000)


class _no_warnings:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.log = self._cm.__enter__()
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        assert not [w for w in self.log if issubclass(w.category, Image.DecompressionBombWarning)]


def test_unsupported_format_with_image_extension(tmp_path):
    # An ICO file renamed .jpg: a real image, but not a decoder we allow on untrusted input.
    Image.new("RGB", (16, 16)).save(tmp_path / "x.ico")
    os.rename(tmp_path / "x.ico", tmp_path / "x.jpg")
    _reason(read_header, tmp_path / "x.jpg")
    p = _write(tmp_path / "h.jpg", b"\x00\x00\x00\x1cftypheic" + b"\x00" * 64)
    assert "unsupported" in _reason(read_header, p)


def test_broken_and_looping_symlinks(tmp_path):
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "broken.jpg")
    assert _reason(read_header, tmp_path / "broken.jpg") == "broken or looping link"
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    assert _reason(read_header, tmp_path / "loop.jpg") == "broken or looping link"
    assert _reason(load_rgb, tmp_path / "loop.jpg") == "broken or looping link"
    _write(tmp_path / "real.jpg", _jpeg_bytes())
    os.symlink(tmp_path / "real.jpg", tmp_path / "good_link.jpg")
    assert read_header(tmp_path / "good_link.jpg")[:2] == (32, 64)


def test_missing_file_and_directory(tmp_path):
    assert _reason(read_header, tmp_path / "gone.jpg") == "file not found"
    (tmp_path / "dir.jpg").mkdir()
    assert _reason(read_header, tmp_path / "dir.jpg") == "not a regular file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_named_jpg_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # open() on it would block forever
    assert _reason(read_header, tmp_path / "pipe.jpg") == "not a regular file"


@pytest.mark.skipif(IS_ROOT, reason="running as root: file permissions are not enforced")
def test_unreadable_file(tmp_path):
    p = _write(tmp_path / "locked.jpg", _jpeg_bytes())
    p.chmod(0)
    try:
        assert "permission" in _reason(read_header, p)
    finally:
        p.chmod(0o644)


def test_non_utf8_and_unicode_file_names(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9_\xff.jpg"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(_jpeg_bytes())
    name = os.fsdecode(raw)
    assert read_header(name)[:2] == (32, 64)
    assert load_rgb(Path(name)).shape == (64, 32, 3)
    uni = _write(tmp_path / "人物_café_😀.png", _noisy_png_bytes())
    assert read_header(uni)[:2] == (48, 96)


def test_user_file_never_modified(tmp_path):
    p = _write(tmp_path / "a.jpg", _jpeg_bytes())
    os.utime(p, (1_000_000_000, 1_000_000_000))
    before = (p.read_bytes(), p.stat().st_mtime_ns)
    read_header(p)
    load_rgb(p)
    load_rgb(p, max_side=16)
    assert (p.read_bytes(), p.stat().st_mtime_ns) == before
    assert sorted(os.listdir(tmp_path)) == ["a.jpg"]


# -- text form of paths -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "cam1/0001_c1s1_000001_00.jpg",
        "caméra/人.png",
        "50%/x%41.jpg",
        "%%odd/a.jpg",
        "%%",
        os.fsdecode(b"cam\xff/a\xe9.jpg"),
        os.fsdecode(b"%%\xff"),
    ],
)
def test_relpath_text_round_trip(rel):
    text = relpath_to_text(rel)
    text.encode("utf-8")  # storable in SQLite TEXT
    assert text_to_relpath(text) == rel


def test_relpath_text_keeps_ordinary_names():
    assert relpath_to_text("cam1/a b/ü.jpg") == "cam1/a b/ü.jpg"
    assert relpath_to_text(os.fsdecode(b"x\xff.jpg")) == "%%x%FF.jpg"


def test_relpath_text_round_trips_to_the_real_file(tmp_path):
    raw = os.fsencode(tmp_path) + b"/\xfe\xff.jpg"
    with open(raw, "wb") as fh:
        fh.write(_jpeg_bytes())
    rel = os.fsdecode(b"\xfe\xff.jpg")
    stored = relpath_to_text(rel)
    assert stored.startswith("%%")
    assert read_header(tmp_path / text_to_relpath(stored))[:2] == (32, 64)
