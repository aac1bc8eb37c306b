"""The embedded look-alike of the Simpsons characters training set.

The real ``characters_train/`` cannot be downloaded here, so a new user runs
on this generator: the 42 real class names with their real image counts (the
table below, ``../shared/data/class_counts.csv``), frame-like sizes from
256x256 to 1072x1912 (mean about 0.17 MP, JPEGs of about 25 KB), and the real
archive's quirks at a low fixed rate.

Each class has its own look (a palette and a layout of shapes) that every
image varies in position, scale, background and noise, so a small CNN learns
it well above chance while no class is a constant image.

Every image is drawn from its own generator seeded by (seed, class, index),
so the bytes do not depend on the worker count or the order of the pool.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from ..common.config import SynthConfig

logger = logging.getLogger(__name__)

# (class, images in characters_train/): 16,764 in all, 3 to 1,797 per class.
CLASS_COUNTS: tuple[tuple[str, int], ...] = (
    ("abraham_grampa_simpson", 731), ("agnes_skinner", 34),
    ("apu_nahasapeemapetilon", 499), ("barney_gumble", 85),
    ("bart_simpson", 1074), ("carl_carlson", 79),
    ("charles_montgomery_burns", 955), ("chief_wiggum", 789),
    ("cletus_spuckler", 38), ("comic_book_guy", 376), ("disco_stu", 7),
    ("edna_krabappel", 366), ("fat_tony", 22), ("gil", 22),
    ("groundskeeper_willie", 97), ("homer_simpson", 1797),
    ("kent_brockman", 399), ("krusty_the_clown", 965),
    ("lenny_leonard", 248), ("lionel_hutz", 3), ("lisa_simpson", 1084),
    ("maggie_simpson", 103), ("marge_simpson", 1033),
    ("martin_prince", 57), ("mayor_quimby", 197),
    ("milhouse_van_houten", 864), ("miss_hoover", 14),
    ("moe_szyslak", 1162), ("ned_flanders", 1164), ("nelson_muntz", 287),
    ("otto_mann", 26), ("patty_bouvier", 58), ("principal_skinner", 956),
    ("professor_john_frink", 52), ("rainier_wolfcastle", 36),
    ("ralph_wiggum", 71), ("selma_bouvier", 83), ("sideshow_bob", 704),
    ("sideshow_mel", 32), ("snake_jailbird", 44), ("troy_mcclure", 6),
    ("waylon_smithers", 145),
)

# (width, height, weight): TV frames of several aspects, both orientations;
# the weighted mean is 0.176 MP, the real set's is about 0.17 MP.
SIZES: tuple[tuple[int, int, float], ...] = (
    (480, 360, 0.45), (256, 256, 0.15), (360, 480, 0.08), (400, 300, 0.12),
    (640, 480, 0.10), (512, 288, 0.07), (1280, 720, 0.02), (1072, 1912, 0.01),
)

# Quirk kinds of the real archive, each placed at quirk_rate (at least once).
QUIRKS = ("png_as_jpg", "grayscale", "rgba_png", "palette_png", "cmyk_jpeg",
          "tiny", "duplicate", "truncated", "zero_byte")

_NOISE_SIDE = 2048  # > the largest side (1912), so any image crops from it
_noise_cache: dict[int, Image.Image] = {}


def class_counts(scale: float, min_per_class: int = 3) -> list[tuple[str, int]]:
    """The 42 (class, count) pairs scaled, each at least ``min_per_class``."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return [(name, max(min_per_class, int(round(n * scale)))) for name, n in CLASS_COUNTS]


def _noise(seed: int) -> Image.Image:
    """A seeded grey noise tile in [0, 32], made once per process."""
    if seed not in _noise_cache:
        rng = np.random.default_rng([seed, 7919])
        tile = rng.integers(0, 33, size=(_NOISE_SIDE, _NOISE_SIDE), dtype=np.uint8)
        _noise_cache[seed] = Image.fromarray(tile, "L")
    return _noise_cache[seed]


def _class_look(seed: int, cls: int) -> dict:
    """A class's palette and shape layout (relative coordinates)."""
    rng = np.random.default_rng([seed, 104729, cls])
    shapes = []
    for _ in range(int(rng.integers(3, 6))):
        shapes.append({
            "kind": int(rng.integers(0, 4)),          # ellipse, box, triangle, ring
            "color": rng.integers(0, 256, 3),
            "cx": rng.uniform(0.2, 0.8), "cy": rng.uniform(0.2, 0.8),
            "w": rng.uniform(0.12, 0.45), "h": rng.uniform(0.12, 0.45),
        })
    return {"bg": rng.integers(0, 256, 3), "bg2": rng.integers(0, 256, 3), "shapes": shapes}


def render(seed: int, cls: int, index: int, size: Optional[tuple[int, int]] = None) -> Image.Image:
    """Draw image ``index`` of class ``cls`` as an RGB PIL image."""
    look = _class_look(seed, cls)
    rng = np.random.default_rng([seed, cls, index])
    if size is None:
        weights = np.array([s[2] for s in SIZES])
        w, h, _ = SIZES[int(rng.choice(len(SIZES), p=weights / weights.sum()))]
    else:
        w, h = size
    jitter = lambda c: tuple(int(v) for v in np.clip(c + rng.integers(-25, 26, 3), 0, 255))
    # Background: a vertical gradient between the class's two colours.
    grad = Image.linear_gradient("L").resize((w, h))
    img = Image.composite(Image.new("RGB", (w, h), jitter(look["bg2"])),
                          Image.new("RGB", (w, h), jitter(look["bg"])), grad)
    draw = ImageDraw.Draw(img)
    scale = rng.uniform(0.75, 1.2)
    dx, dy = rng.uniform(-0.1, 0.1, 2)
    side = min(w, h)
    for s in look["shapes"]:
        cx = (s["cx"] + dx + rng.uniform(-0.04, 0.04)) * w
        cy = (s["cy"] + dy + rng.uniform(-0.04, 0.04)) * h
        hw, hh = s["w"] * side * scale / 2, s["h"] * side * scale / 2
        box = [cx - hw, cy - hh, cx + hw, cy + hh]
        color = jitter(s["color"])
        if s["kind"] == 0:
            draw.ellipse(box, fill=color)
        elif s["kind"] == 1:
            draw.rectangle(box, fill=color)
        elif s["kind"] == 2:
            draw.polygon([(cx, cy - hh), (cx - hw, cy + hh), (cx + hw, cy + hh)], fill=color)
        else:
            draw.ellipse(box, outline=color, width=max(2, int(hw / 3)))
    for _ in range(int(rng.integers(1, 4))):  # distractors shared by all classes
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.1) * side
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    tile = _noise(seed)
    ox, oy = (int(v) for v in rng.integers(0, _NOISE_SIDE - max(w, h) + 1, 2))
    noise = Image.merge("RGB", [tile.crop((ox + k, oy, ox + k + w, oy + h)) for k in (0, 5, 11)])
    return ImageChops.add(img, noise, scale=1.0, offset=-16)


def _encode(img: Image.Image, fmt: str, quality: int, **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, **kw)
    else:
        img.save(buf, fmt, **kw)
    return buf.getvalue()


def image_bytes(cfg: SynthConfig, cls: int, index: int, quirk: Optional[str]) -> tuple[str, bytes]:
    """The (file suffix, bytes) of one image, quirk applied."""
    q = cfg.jpeg_quality
    if quirk == "duplicate":  # byte-identical copy of the class's image 0
        return image_bytes(cfg, cls, 0, None)
    if quirk == "zero_byte":
        return ".jpg", b""
    if quirk == "tiny":
        return ".jpg", _encode(render(cfg.seed, cls, index, size=(48, 36)), "JPEG", q)
    img = render(cfg.seed, cls, index)
    if quirk == "png_as_jpg":
        return ".jpg", _encode(img, "PNG", q, compress_level=1)
    if quirk == "grayscale":
        return ".jpg", _encode(img.convert("L"), "JPEG", q)
    if quirk == "rgba_png":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(img.size))
        return ".png", _encode(rgba, "PNG", q, compress_level=1)
    if quirk == "palette_png":
        return ".png", _encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", q)
    if quirk == "cmyk_jpeg":
        return ".jpg", _encode(img.convert("CMYK"), "JPEG", q)
    data = _encode(img, "JPEG", q)
    if quirk == "truncated":
        return ".jpg", data[: len(data) * 3 // 5]
    return ".jpg", data


def plan_quirks(cfg: SynthConfig, counts: list[tuple[str, int]]) -> dict[tuple[int, int], str]:
    """Which (class, index) slots carry which quirk.

    Quirks go to classes of 10+ images and never to index 0 (the source of a
    class's duplicate), so the long tail keeps all of its good images.
    """
    total = sum(n for _, n in counts)
    slots = [(c, i) for c, (_, n) in enumerate(counts) if n >= 10 for i in range(1, n)]
    per_kind = max(1, int(round(total * cfg.quirk_rate)))
    rng = np.random.default_rng([cfg.seed, 31337])
    chosen = rng.permutation(len(slots))[: per_kind * len(QUIRKS)]
    return {slots[j]: QUIRKS[k % len(QUIRKS)] for k, j in enumerate(chosen)}


def _write_one(task: tuple) -> int:
    cfg, root, cls_name, cls, index, quirk = task
    suffix, data = image_bytes(cfg, cls, index, quirk)
    path = Path(root) / cls_name / f"pic_{index:04d}{suffix}"
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a crash never leaves a half-written image
    return len(data)


def generate(out: Path, cfg: SynthConfig, workers: Optional[int] = None, progress: bool = False) -> dict:
    """Write the look-alike set under ``out`` (one folder per class).

    Args:
        out: destination folder (created; existing files are overwritten).
        cfg: scale, seed and quirk rate.
        workers: processes (default: every CPU).
        progress: show a tqdm bar on stderr.

    Returns:
        A summary: images, bytes, quirk counts, extra junk files written.
    """
    from ..common.env import cpu_count

    out = Path(out)
    counts = class_counts(cfg.scale, cfg.min_per_class)
    quirks = plan_quirks(cfg, counts)
    for name, _ in counts:
        (out / name).mkdir(parents=True, exist_ok=True)
    tasks = [(cfg, str(out), name, c, i, quirks.get((c, i)))
             for c, (name, n) in enumerate(counts) for i in range(n)]
    workers = workers or cpu_count()
    total_bytes = 0
    bar = tqdm(total=len(tasks), desc="synth", unit="img", disable=not progress)
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            for nbytes in pool.imap_unordered(_write_one, tasks, chunksize=16):
                total_bytes += nbytes
                bar.update()
    else:
        for t in tasks:
            total_bytes += _write_one(t)
            bar.update()
    bar.close()
    # Junk the real archive carries: macOS metadata and a stray text file.
    junk = [out / ".DS_Store", out / counts[0][0] / ".DS_Store", out / counts[1][0] / "notes.txt"]
    junk[0].write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    junk[1].write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    junk[2].write_text("frames exported from the episode list\n", encoding="utf-8")
    kinds: dict[str, int] = {}
    for k in quirks.values():
        kinds[k] = kinds.get(k, 0) + 1
    logger.info("synth: %d images, %.1f MB in %s", len(tasks), total_bytes / 1e6, out)
    return {"images": len(tasks), "bytes": total_bytes, "classes": len(counts),
            "quirks": kinds, "junk_files": len(junk)}
