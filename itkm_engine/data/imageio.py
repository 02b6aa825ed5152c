"""Safe, read-only access to the user's image files.

Every crop the app touches comes from a folder the user pointed at, so every file is treated as
hostile: empty, cut short, renamed text, a 100000x100000 "image" of a few bytes, a named pipe with a
``.jpg`` name, a symlink into a loop.  This module is the one place that opens them, and it turns
every such case into :class:`BadImage` with a short reason a user can act on, instead of a crash,
a hang or a memory blow-up.

Two entry points, with different costs:

* :func:`read_header` / :func:`probe` parse only the header (Pillow's lazy ``Image.open``; no pixel
  is decoded).  Used by ingestion on every file, so it must stay cheap.  A file whose *body* is cut
  short passes here: that can only be known by decoding, so it is found by :func:`load_rgb`.
* :func:`load_rgb` decodes fully (``LOAD_TRUNCATED_IMAGES`` stays False, so truncation raises),
  applies the EXIF orientation and normalises every colour mode to ``HxWx3 uint8`` RGB.

Files are only ever opened with ``open(path, "rb")``; nothing here writes, renames or touches a
user's file.

Non-UTF-8 file names
--------------------
POSIX file names are bytes.  Python represents undecodable bytes in ``str`` paths with lone
surrogates (``surrogateescape``), which ``open()`` accepts but SQLite ``TEXT`` (valid UTF-8 only)
does not.  The workspace therefore stores every relative path in a *text form* made by
:func:`relpath_to_text` and turns it back with :func:`text_to_relpath`:

* a path whose bytes are valid UTF-8 (all but a few real-world names) is stored unchanged;
* any other path -- and, so the mapping stays unambiguous, any path that itself starts with the
  marker ``%%`` -- is stored as ``"%%"`` followed by its bytes percent-encoded (``%XX`` for
  non-printable / non-ASCII bytes and for ``%`` itself).

The mapping is a bijection between file-system relpaths and valid UTF-8 strings, ordinary names
read naturally in the database, and ``text_to_relpath(relpath_to_text(p)) == p`` for every ``p``.
Camera names derived from folder names use the same form.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import urllib.parse
import warnings
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..errors import ItkmError

__all__ = [
    "BadImage",
    "ImageHeader",
    "MAX_PIXELS",
    "MIN_SIDE",
    "MAX_FILE_BYTES",
    "IMAGE_EXTENSIONS",
    "is_image_name",
    "read_header",
    "probe",
    "load_rgb",
    "relpath_to_text",
    "text_to_relpath",
    "describe_path",
]

#: Refuse images with more pixels than this (decompression-bomb guard).  A person crop is a few
#: hundred pixels high; 64 megapixels is far beyond any real crop and still cheap to refuse.
MAX_PIXELS: int = 64_000_000
#: Refuse images with a side shorter than this: nothing can be learned from a 1x1 or 4x3 "crop".
MIN_SIDE: int = 8
#: Refuse files larger than this before opening them (a crop is kilobytes; this is a sanity bound).
MAX_FILE_BYTES: int = 512 * 1024 * 1024

#: File extensions ingestion picks up (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

#: Pillow decoders we allow a file to be parsed by, whatever its extension says.  Restricting the
#: plugins keeps exotic (and less hardened) parsers away from untrusted bytes.  MPO is how Pillow
#: names JPEGs from cameras that embed a second picture.
_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")

#: Colour that transparent pixels are composited over: neutral grey, the dataset mean-ish colour,
#: so an alpha cut-out neither looks like a black nor a white background to the model.
_MATTE = (128, 128, 128)

# Our own limit (MAX_PIXELS) is stricter than Pillow's warning threshold (MAX_IMAGE_PIXELS, ~89 M),
# so an image large enough to make Pillow warn is refused by us anyway; the warning would only be
# noise on the console.  (A ``catch_warnings`` block per call is not thread-safe, and header reads
# run in a thread pool, hence one targeted filter.)  Images above 2x Pillow's limit raise
# DecompressionBombError inside Image.open, which is caught below.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImage(ItkmError):
    """A file that cannot be used as an image, with a short reason for the user.

    ``reason`` is a few words ("empty file", "too small (1x1 px)") suitable for a rejects table;
    ``str(exc)`` adds the path.
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        super().__init__(reason if path is None else f"{os.fsdecode(self.path)!s}: {reason}")


class ImageHeader(NamedTuple):
    """What the header says: size in pixels, Pillow mode ("RGB", "L", "CMYK", "I;16" ...), format."""

    width: int
    height: int
    mode: str
    format: str


# --------------------------------------------------------------------------------------------
# names and paths
# --------------------------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    """True when ``name`` has one of the supported image extensions (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


_TEXT_MARKER = "%%"
# Bytes kept literally inside an escaped path: printable ASCII except '%' (the escape character).
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def relpath_to_text(relpath: str | os.PathLike) -> str:
    """The valid-UTF-8 text form of a file-system (relative) path, for SQLite ``TEXT``.

    See the module docstring; inverse of :func:`text_to_relpath`.
    """
    raw = os.fsencode(relpath)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and not text.startswith(_TEXT_MARKER):
        return text
    return _TEXT_MARKER + urllib.parse.quote_from_bytes(raw, safe=_SAFE)


def text_to_relpath(text: str) -> str:
    """The file-system path (``str``, surrogate-escaped where needed) for a stored text form."""
    if not text.startswith(_TEXT_MARKER):
        return text
    return os.fsdecode(urllib.parse.unquote_to_bytes(text[len(_TEXT_MARKER) :]))


# --------------------------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------------------------


def _stat_file(path: str | os.PathLike) -> os.stat_result:
    """``os.stat`` (following links) that turns every failure into a :class:`BadImage`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise BadImage("broken or looping link", path) from None
        raise BadImage("file not found", path) from None
    except PermissionError:
        raise BadImage("permission denied", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadImage("broken or looping link", path) from None
        raise BadImage(f"cannot read file ({exc.strerror or exc})", path) from None
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device named *.jpg would block or stream forever on open(); never open those.
        raise BadImage("not a regular file", path)
    if st.st_size == 0:
        raise BadImage("empty file (0 bytes)", path)
    if st.st_size > MAX_FILE_BYTES:
        raise BadImage(f"file too large ({st.st_size // (1024 * 1024)} MB)", path)
    return st


def _open_file(path: str | os.PathLike):
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
    except PermissionError:
        raise BadImage("permission denied", path) from None
    except IsADirectoryError:
        raise BadImage("not a regular file", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadImage("broken or looping link", path) from None
        raise BadImage(f"cannot read file ({exc.strerror or exc})", path) from None


def _open_image(fh, path, max_pixels: int) -> ImageFile.ImageFile:
    """Lazy ``Image.open`` on an open file, with every header-level failure mapped to BadImage."""
    try:
        im = Image.open(fh, formats=_FORMATS)
    except Image.DecompressionBombError:
        raise BadImage(f"too large (more than {max_pixels // 1_000_000} megapixels)", path) from None
    except Image.UnidentifiedImageError:
        raise BadImage(_unidentified_reason(fh), path) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
            ZeroDivisionError, zlib.error, MemoryError) as exc:
        # Pillow's header parsers signal malformed input with a zoo of exception types; for a
        # hostile file all of them mean the same thing to the user.
        reason = _unidentified_reason(fh)
        if reason.startswith("not an image"):
            reason = f"corrupt image header ({type(exc).__name__})"
        raise BadImage(reason, path) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise BadImage(f"too large ({w}x{h} px, limit {max_pixels // 1_000_000} megapixels)", path)
    if w < MIN_SIDE or h < MIN_SIDE:
        im.close()
        raise BadImage(f"too small ({w}x{h} px, minimum {MIN_SIDE} px a side)", path)
    return im


def _unidentified_reason(fh) -> str:
    """Tell a truncated/corrupt image from a file that is not an image at all, by its magic."""
    try:
        fh.seek(0)
        head = fh.read(16)
    except OSError:
        return "not an image"
    magics = {
        b"\xff\xd8": "JPEG",
        b"\x89PNG": "PNG",
        b"BM": "BMP",
        b"RIFF": "WEBP",
        b"GIF8": "GIF",
        b"II*\x00": "TIFF",
        b"MM\x00*": "TIFF",
    }
    for magic, name in magics.items():
        if head.startswith(magic):
            return f"truncated or corrupt {name} header"
    if head[:4] in (b"\x00\x00\x00\x0c", b"\x00\x00\x00\x18", b"\x00\x00\x00\x1c") or b"ftyp" in head:
        return "unsupported format (HEIC/AVIF/JPEG 2000?)"
    return "not an image (unrecognised content)"


def read_header(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> ImageHeader:
    """Size, mode and format of an image file without decoding its pixels.

    Raises :class:`BadImage` for: missing / broken or looping link / not a regular file, permission
    denied, empty file, not an image, truncated or corrupt header, unsupported format, more than
    ``max_pixels`` pixels, or a side below :data:`MIN_SIDE`.  A body cut short is *not* detected
    here (that needs a decode; :func:`load_rgb` finds it).
    """
    return probe(path, max_pixels=max_pixels)[0]


def probe(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> tuple[ImageHeader, os.stat_result]:
    """:func:`read_header` plus the file's ``stat`` (size, mtime), with one stat call.

    Ingestion needs both for every file; doing them together keeps it at one ``stat`` and one
    ``open`` per image.
    """
    st = _stat_file(path)
    with _open_file(path) as fh:
        im = _open_image(fh, path, max_pixels)
        try:
            header = ImageHeader(im.size[0], im.size[1], im.mode, im.format or "")
        finally:
            im.close()
    return header, st


# --------------------------------------------------------------------------------------------
# full decode
# --------------------------------------------------------------------------------------------


def load_rgb(
    path: str | os.PathLike,
    *,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode an image to a contiguous ``HxWx3 uint8`` RGB array.

    * EXIF orientation is applied (a phone crop shows upright); a corrupt EXIF block is ignored.
    * CMYK -> RGB; 16-bit / 32-bit integer and float greyscale are scaled to 8 bits (see
      :func:`_to_uint8`); palette images are expanded (with their transparency); images with alpha
      are composited over neutral grey; greyscale and 1-bit are replicated to three channels.
    * A body cut short raises ``BadImage("truncated or corrupt image data")`` (Pillow's
      ``LOAD_TRUNCATED_IMAGES`` must stay False, its default; we refuse to run otherwise rather
      than silently train on grey-padded crops).
    * ``max_side``: when given, the image is reduced so its longer side is at most this many
      pixels -- using the JPEG decoder's DCT scaling (``draft``), which is several times faster than
      a full decode.  Used for thumbnails and the camera guess.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True somewhere in this process; "
            "itkm_engine needs it False to detect truncated images"
        )
    _stat_file(path)
    with _open_file(path) as fh:
        im = _open_image(fh, path, max_pixels)
        try:
            if max_side is not None and im.format == "JPEG":
                w, h = im.size
                scale = max_side / max(w, h)
                if scale < 1:
                    im.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
            try:
                im.load()
            except Image.DecompressionBombError:
                raise BadImage(f"too large (more than {max_pixels // 1_000_000} megapixels)", path) from None
            except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
                    TypeError, ZeroDivisionError, zlib.error) as exc:
                reason = "truncated or corrupt image data"
                if isinstance(exc, OSError) and "decoder" in str(exc) and "not available" in str(exc):
                    reason = "unsupported image encoding"
                raise BadImage(reason, path) from None
            except MemoryError:
                raise BadImage("not enough memory to decode", path) from None
            out = _exif_upright(im)
            if max_side is not None and max(out.size) > max_side:
                out = out.copy() if out is im else out
                out.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
            return _to_rgb_array(out, path)
        finally:
            im.close()


def _exif_upright(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block must not make a good image unusable
        return im
    return im if out is None else out


def _to_rgb_array(im: Image.Image, path) -> np.ndarray:
    mode = im.mode
    try:
        if mode == "RGB":
            arr = np.asarray(im)
        elif mode in ("L", "1"):
            arr = np.asarray(im.convert("L"))
        elif mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = _to_uint8(np.asarray(im))
        elif mode == "P" or mode == "PA":
            has_alpha = mode == "PA" or "transparency" in im.info
            return _to_rgb_array(im.convert("RGBA" if has_alpha else "RGB"), path)
        elif mode in ("RGBA", "LA", "RGBa", "La"):
            rgba = im.convert("RGBA")
            base = Image.new("RGBA", rgba.size, _MATTE + (255,))
            arr = np.asarray(Image.alpha_composite(base, rgba).convert("RGB"))
        else:  # CMYK, YCbCr, LAB, HSV, RGBX ...
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise BadImage(f"unsupported colour mode {mode} ({exc})", path) from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImage(f"unsupported colour mode {mode}", path)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth greyscale array to 0..255.

    The file does not say which range is used, so it is taken from the data type and values:
    16-bit integers divide by 257 (0..65535 -> 0..255, exact for 8-bit data stored in 16 bits);
    32-bit integers ("I" mode) are used as-is when they fit 0..255, divided by 257 when they fit
    16 bits, else min-max scaled; floats in 0..1 are multiplied by 255, other floats min-max scaled.
    Thermal cameras often write 16-bit PNGs, so this path matters for infrared crops.
    """
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        return (a.astype(np.uint32) // 257).astype(np.uint8)
    was_float = a.dtype.kind == "f"
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if was_float and 0.0 <= lo and hi <= 1.0 and _fractional(a):
        return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return a.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return (a // 257).astype(np.uint8)
    if hi - lo < 1e-12:
        return np.zeros(a.shape, np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def _fractional(a: np.ndarray) -> bool:
    """True when some value is not an integer: 0..1 data is then a float image, not a 0/1 mask."""
    return bool(np.any(a != np.round(a)))


def describe_path(path: str | os.PathLike) -> str:
    """A printable form of a path (undecodable bytes shown as \\xNN), for messages."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
