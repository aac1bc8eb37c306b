"""One image file to one uint8 RGB square: the only decode path.

Preprocess, evaluate ``--data-dir`` and predict all call :func:`decode_bytes`
so a model sees at inference exactly what it saw in training.

Speed: for JPEGs, ``Image.draft`` asks libjpeg for a DCT-domain reduced
decode (1/2, 1/4 or 1/8 scale) that still covers the output size, so a
480x360 frame going to 128 px decodes at 240x180 (a quarter of the pixels)
before the antialiasing resize, a large part of a full decode + resize
(libjpeg-turbo's Huffman decoding, which no reduced-size decode skips, is
most of what is left; benchmarks/history/bench.md "Against the targets of the issues").
The result differs from a full decode + resize by about one grey
level on average (``tests/imaging/test_decode.py`` holds it under 3).
"""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
from PIL import Image

from ..common.untrusted import not_a_file

RESAMPLE = Image.Resampling.BILINEAR  # antialiased in Pillow (support grows when shrinking)


_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


class DecodeError(Exception):
    """A file that is not a usable image; the message is the skip reason."""


def _reason(prefix: str, exc: BaseException) -> str:
    """A skip reason that is the same in every run: no ``<... at 0x7f..>`` addresses."""
    return prefix + ": " + _ADDRESS.sub(r"<\1>", str(exc))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F, 1) as RGB.

    Alpha is dropped (the colour under it is kept), as the notebooks'
    ``convert('RGB')`` did; 16/32-bit greys are scaled to 8 bits.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / top), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when a transparent palette goes straight to RGB
    return im.convert("RGB")


def _fit(im: Image.Image, size: int, fit: str) -> Image.Image:
    w, h = im.size
    if fit == "squash" or w == h:
        return im.resize((size, size), RESAMPLE)
    if fit == "crop":
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return im.resize((size, size), RESAMPLE, box=box)
    # pad: keep the aspect, longer side = size, centred on black
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(im.resize((nw, nh), RESAMPLE), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def decode_image(im: Image.Image, size: int, fit: str = "squash", min_side: int = 1,
                 draft: bool = True) -> np.ndarray:
    """Decode an opened PIL image to a (size, size, 3) uint8 array.

    Raises:
        DecodeError: too small, or the data is damaged (truncated, corrupt).
    """
    w, h = im.size
    if min(w, h) < min_side:
        raise DecodeError(f"too small ({w}x{h} < {min_side} px)")
    try:
        if draft and im.format == "JPEG":
            # Request a size the reduced decode must still cover: size x size
            # for squash/crop, and for pad the scaled long side (>= size).
            im.draft("RGB", (size, size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette/EXIF chatter is not an error
            im.load()
            out = _fit(to_rgb(im), size, fit)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError(_reason("cannot decode", exc)) from exc
    except MemoryError:
        raise DecodeError(f"too large to decode ({w}x{h})") from None
    except Exception as exc:  # a decoder bug on a hostile file is still one bad file
        raise DecodeError(_reason(f"cannot decode: {type(exc).__name__}", exc)) from exc
    return np.asarray(out, dtype=np.uint8)


def decode_bytes(data: bytes, size: int, fit: str = "squash", min_side: int = 1,
                 draft: bool = True) -> np.ndarray:
    """Decode an image file's bytes to a (size, size, 3) uint8 array.

    Raises:
        DecodeError: empty, not an image, damaged or too small.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        # PIL refuses images over 2 x MAX_IMAGE_PIXELS (179 MP by default);
        # between 1x and 2x it only warns, and a 90 MP image still costs 270 MB
        # to decode, so the warning is a refusal here too (one bomb guard for
        # preprocess, evaluate and predict).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(_reason("decompression bomb", exc)) from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DecodeError(_reason("not an image", exc)) from exc
    except Exception as exc:  # a parser bug on a hostile file is still one bad file
        raise DecodeError(_reason(f"not an image: {type(exc).__name__}", exc)) from exc
    return decode_image(im, size, fit, min_side, draft)


def decode_file(path, size: int, fit: str = "squash", min_side: int = 1, draft: bool = True) -> np.ndarray:
    """:func:`decode_bytes` on a file's contents; an unreadable file is a DecodeError too.

    Raises:
        DecodeError: the reason, e.g. ``broken symbolic link`` or ``too small (1x1 < 16 px)``.
    """
    try:
        kind = not_a_file(os.stat(path))   # before open(): opening a FIFO blocks, a device never ends
        if kind:
            raise DecodeError(f"{kind}, not an image file")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        if os.path.islink(path) and not os.path.exists(path):
            raise DecodeError("broken symbolic link") from None
        raise DecodeError(f"unreadable: {exc.strerror or exc}") from None
    return decode_bytes(data, size, fit, min_side, draft)
