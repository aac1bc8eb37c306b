import hashlib
import io

import numpy as np
from PIL import Image

from pipeline.common.config import SynthConfig
from pipeline.tools.synth import CLASS_COUNTS, QUIRKS, class_counts, generate, image_bytes, plan_quirks


def _digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_embedded_table_is_the_real_one():
    assert len(CLASS_COUNTS) == 42
    assert sum(n for _, n in CLASS_COUNTS) == 16764
    assert min(n for _, n in CLASS_COUNTS) == 3 and max(n for _, n in CLASS_COUNTS) == 1797


def test_scaled_counts_keep_a_floor_of_three():
    counts = class_counts(0.01)
    assert [n for _, n in counts][:3] == [7, 3, 5]
    assert min(n for _, n in counts) == 3
    assert dict(class_counts(1.0))["homer_simpson"] == 1797


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    cfg = SynthConfig(scale=0.005, seed=3)
    generate(tmp_path / "a", cfg, workers=1)
    generate(tmp_path / "b", cfg, workers=2)
    generate(tmp_path / "c", SynthConfig(scale=0.005, seed=4), workers=2)
    a, b, c = (_digest_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_layout_counts_and_junk(lookalike):
    for name, n in class_counts(0.01):
        files = [p for p in (lookalike / name).iterdir() if p.suffix in (".jpg", ".png")]
        assert len(files) == n, name
    assert (lookalike / ".DS_Store").is_file()
    assert (lookalike / "agnes_skinner" / "notes.txt").is_file()


def test_every_quirk_is_placed_and_real():
    cfg = SynthConfig(scale=0.01)
    counts = class_counts(0.01)
    quirks = plan_quirks(cfg, counts)
    assert sorted(set(quirks.values())) == sorted(QUIRKS)
    assert all(i > 0 and counts[c][1] >= 10 for c, i in quirks)
    opened = lambda b: Image.open(io.BytesIO(b))
    assert opened(image_bytes(cfg, 0, 1, "png_as_jpg")[1]).format == "PNG"
    assert opened(image_bytes(cfg, 0, 1, "grayscale")[1]).mode == "L"
    assert opened(image_bytes(cfg, 0, 1, "rgba_png")[1]).mode == "RGBA"
    assert opened(image_bytes(cfg, 0, 1, "palette_png")[1]).mode == "P"
    assert opened(image_bytes(cfg, 0, 1, "cmyk_jpeg")[1]).mode == "CMYK"
    assert max(opened(image_bytes(cfg, 0, 1, "tiny")[1]).size) < 64
    assert image_bytes(cfg, 0, 5, "duplicate") == image_bytes(cfg, 0, 0, None)
    assert image_bytes(cfg, 0, 1, "zero_byte")[1] == b""
    full = image_bytes(cfg, 0, 1, None)[1]
    assert image_bytes(cfg, 0, 1, "truncated")[1] == full[: len(full) * 3 // 5]


def test_sizes_and_weight_look_like_tv_frames():
    cfg = SynthConfig()
    sizes, weights = [], []
    for i in range(120):
        data = image_bytes(cfg, i % 42, i + 1, None)[1]
        sizes.append(Image.open(io.BytesIO(data)).size)
        weights.append(len(data))
    assert all(256 <= min(s) and max(s) <= 1912 for s in sizes)
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert 15_000 < np.mean(weights) < 40_000


def test_classes_differ_but_images_within_a_class_vary():
    cfg = SynthConfig()
    from pipeline.tools.synth import render
    a0 = np.asarray(render(cfg.seed, 0, 1, (128, 128)), dtype=float)
    a1 = np.asarray(render(cfg.seed, 0, 2, (128, 128)), dtype=float)
    b0 = np.asarray(render(cfg.seed, 1, 1, (128, 128)), dtype=float)
    assert np.abs(a0 - a1).mean() > 3  # not a constant image
    assert np.abs(a0.mean((0, 1)) - b0.mean((0, 1))).max() > 10  # own palette
