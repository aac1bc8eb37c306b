import io

import numpy as np
import pytest
from PIL import Image

from pipeline.common.config import SynthConfig
from pipeline.imaging.decode import RESAMPLE, DecodeError, decode_bytes, decode_image
from pipeline.tools.synth import image_bytes


def _png(im):
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("size", [64, 128])
def test_reduced_decode_matches_full_decode(size):
    cfg = SynthConfig()
    diffs = []
    for i in range(1, 13):
        data = image_bytes(cfg, i, i, None)[1]
        fast = decode_bytes(data, size)
        plain = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), RESAMPLE))
        assert fast.shape == (size, size, 3) and fast.dtype == np.uint8
        diffs.append(np.abs(fast.astype(int) - plain.astype(int)).mean())
    assert np.mean(diffs) < 3.0
    assert max(diffs) < 5.0


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    rgb = Image.new("RGB", (50, 40), (200, 100, 50))
    if mode == "I;16":
        im = Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16))
    elif mode in ("I", "F"):
        im = rgb.convert("L").convert(mode)
    elif mode == "PA":
        im = rgb.convert("P").convert("PA")
    else:
        im = rgb.convert(mode)
    assert im.mode == mode
    out = decode_image(im, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    if mode == "I;16":
        assert abs(int(out[8, 8, 0]) - round(40000 / 65535 * 255)) <= 1
    elif mode in ("RGBA", "CMYK", "YCbCr", "P"):
        assert np.abs(out[8, 8].astype(int) - [200, 100, 50]).max() <= 12


@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("PNG", "LA"), ("PNG", "P"), ("PNG", "RGBA"),
                                      ("JPEG", "CMYK"), ("JPEG", "L"), ("TIFF", "I;16"), ("GIF", "P")])
def test_files_of_every_mode_decode(fmt, mode):
    im = Image.new("RGB", (50, 40), (200, 100, 50))
    im = Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16)) if mode == "I;16" else im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    out = decode_bytes(buf.getvalue(), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_fit_policies():
    im = Image.new("RGB", (200, 100), (255, 0, 0))
    data = _png(im)
    pad = decode_bytes(data, 32, fit="pad")
    assert pad.shape == (32, 32, 3)
    assert pad[0, 16].tolist() == [0, 0, 0] and pad[16, 16].tolist() == [255, 0, 0]
    crop = decode_bytes(data, 32, fit="crop")
    assert crop[0, 0].tolist() == [255, 0, 0]
    assert decode_bytes(data, 32, fit="squash")[0, 0].tolist() == [255, 0, 0]


def test_bad_files_raise_decode_error_with_reason():
    good = image_bytes(SynthConfig(), 0, 1, None)[1]
    with pytest.raises(DecodeError, match="empty"):
        decode_bytes(b"", 32)
    with pytest.raises(DecodeError, match="not an image"):
        decode_bytes(b"hello, this is text", 32)
    with pytest.raises(DecodeError, match="truncated"):
        decode_bytes(good[: len(good) // 2], 32)
    with pytest.raises(DecodeError, match="too small"):
        decode_bytes(_png(Image.new("RGB", (10, 40))), 32, min_side=16)
