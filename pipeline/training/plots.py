"""What a run writes for a reader: ``metrics.csv`` and plots drawn with PIL (matplotlib would pull
Pillow over Pillow-SIMD).

Drawn to read at a glance as a plotting library's would: round axis ticks
(1, 2, 2.5 or 5 times a power of ten), integer epoch ticks, legends and
labels measured so nothing overlaps or is clipped, counts in the confusion
matrix's cells over a colour scale with its bar. Files are written
atomically (a full disk never leaves a half PNG).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..common.files import atomic_write, write_text

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))
INK, GRID, MUTED = (20, 20, 20), (228, 228, 228), (110, 110, 110)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    return draw.textlength(text, font=font)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2, 2.5 or 5 x 10^k, about ``count`` of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [start + k * step for k in range(int(math.ceil((hi - start) / step - 1e-9)) + 1)]
    return [round(t, 10) for t in ticks]


def _fmt(v: float, step: float) -> str:
    """``v`` with as many decimals as the tick step needs (0.25 -> 2, 0.5 -> 1, 5 -> 0)."""
    d = 0
    while d < 6 and abs(step * 10 ** d - round(step * 10 ** d)) > 1e-9:
        d += 1
    return f"{v:.{d}f}"


def _panel(img: Image.Image, draw: ImageDraw.ImageDraw, box, series: dict[str, list[float]], title: str,
           ylabel: str, font) -> None:
    x0, y0, x1, y1 = box
    values = [v for s in series.values() for v in s if v is not None and np.isfinite(v)]
    n = max((len(s) for s in series.values()), default=0)
    draw.text((x0, y0 - 30), title, fill=INK, font=_font(18))
    ticks = nice_ticks(min(values), max(values)) if values else [0.0, 1.0]
    lo, hi = ticks[0], ticks[-1]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    ys = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)  # noqa: E731
    xs = lambda j: x0 + 10 + (x1 - x0 - 20) * (j / max(1, n - 1))  # noqa: E731  (epoch index 0..n-1)
    for t in ticks:
        y = ys(t)
        draw.line([(x0, y), (x1, y)], fill=GRID)
        label = _fmt(t, step)
        draw.text((x0 - 8 - _width(draw, label, font), y - 8), label, fill=INK, font=font)
    every = max(1, math.ceil(n / 12))  # at most ~12 epoch labels
    for j in range(n):
        if (j + 1) % every == 0 or j == 0:
            x = xs(j)
            draw.line([(x, y1), (x, y1 + 5)], fill=INK)
            label = str(j + 1)
            draw.text((x - _width(draw, label, font) / 2, y1 + 7), label, fill=INK, font=font)
    draw.rectangle(box, outline=INK)
    draw.text(((x0 + x1) / 2 - _width(draw, "epoch", font) / 2, y1 + 28), "epoch", fill=INK, font=font)
    label = Image.new("RGB", (int(_width(draw, ylabel, font)) + 4, 20), "white")
    ImageDraw.Draw(label).text((2, 0), ylabel, fill=INK, font=font)
    img.paste(label.rotate(90, expand=True), (int(x0 - 75), int((y0 + y1) / 2 - label.width / 2)))
    lx = x0  # legend: one row under the axis, never over the lines
    for i, (name, s) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = [(xs(j), ys(v)) for j, v in enumerate(s) if v is not None and np.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=3)
        for p in pts:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
        draw.line([(lx, y1 + 62), (lx + 24, y1 + 62)], fill=color, width=4)
        draw.text((lx + 30, y1 + 53), name, fill=INK, font=font)
        lx += 30 + _width(draw, name, font) + 28


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and val, as one PNG (1200 x 560)."""
    img = Image.new("RGB", (1200, 560), "white")
    draw = ImageDraw.Draw(img)
    font = _font(15)
    col = lambda k: [None if h.get(k) is None else float(h[k]) for h in history]  # noqa: E731  (None: no val)
    _panel(img, draw, (100, 50, 560, 440), {"train loss": col("train_loss"), "val loss": col("val_loss")},
           "loss", "cross-entropy", font)
    _panel(img, draw, (720, 50, 1180, 440), {"train acc": col("train_acc"), "val acc": col("val_acc"),
                                        "val macro-F1": col("val_f1")}, "accuracy", "fraction", font)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def worst_confusions(cm: np.ndarray, names: list[str], k: int = 8) -> list[dict]:
    """The ``k`` largest off-diagonal cells: true -> predicted, count and share of the true class."""
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    rows = cm.sum(1)
    share = np.divide(off, rows[:, None], out=np.zeros(off.shape), where=rows[:, None] > 0)
    order = np.lexsort((-share.ravel(), -off.ravel()))[:k]  # by count, then by share of the true class
    out = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if off[i, j] == 0:
            break
        out.append({"true": names[i], "predicted": names[j], "count": int(off[i, j]),
                    "share": float(off[i, j] / rows[i]) if rows[i] else 0.0})
    return out


def _blue(v: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1)."""
    return (int(247 - 239 * v), int(251 - 203 * v), int(255 - 148 * v))


def plot_confusion(cm: np.ndarray, names: list[str], path: Path) -> None:
    """Confusion matrix: counts in the cells, colour by share of the true class, a colour bar,
    full class names on both axes, and the worst confusions listed under it."""
    n = len(names)
    cell = max(18, min(44, 900 // max(1, n)))
    font = _font(max(10, min(15, cell - 6)))
    small = _font(max(8, min(13, cell - 8)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(_width(probe, s, font) for s in names)) + 16
    worst = worst_confusions(cm, names)
    left, top = label_w + 30, label_w + 50
    width = left + n * cell + 110
    lines = 2 + len(worst)
    height = top + n * cell + 50 + 22 * lines
    width = max(width, int(max([_width(probe, f"{w['true']} -> {w['predicted']}: {w['count']} "
                                                 f"({100 * w['share']:.0f}% of {w['true']})", font)
                                for w in worst] + [0])) + 40)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    for i in range(n):
        draw.text((left - 8 - _width(draw, names[i], font), top + i * cell + (cell - 15) / 2), names[i],
                  fill=INK, font=font)
        for j in range(n):
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=_blue(norm[i, j]), outline=GRID)
            if cm[i, j]:
                text = str(int(cm[i, j]))
                draw.text((box[0] + (cell - _width(draw, text, small)) / 2, box[1] + (cell - 13) / 2), text,
                          fill="white" if norm[i, j] > 0.5 else INK, font=small)
    col = Image.new("RGB", (label_w, n * cell), "white")  # column names, rotated to read upwards
    cd = ImageDraw.Draw(col)
    for j in range(n):
        cd.text((label_w - 6 - _width(cd, names[j], font), j * cell + (cell - 15) / 2), names[j], fill=INK, font=font)
    img.paste(col.rotate(90, expand=True), (left, top - label_w - 4))
    draw.text((8, 8), "rows: true class   columns: predicted class   colour: share of the true class",
              fill=MUTED, font=_font(13))
    bx = left + n * cell + 24  # colour bar, 0% at the bottom
    for k in range(n * cell):
        draw.line([(bx, top + k), (bx + 16, top + k)], fill=_blue(1 - k / max(1, n * cell - 1)))
    draw.rectangle([bx, top, bx + 16, top + n * cell], outline=INK)
    for v in (0, 0.5, 1):
        y = top + n * cell * (1 - v)
        draw.text((bx + 22, y - 8), f"{int(100 * v)}%", fill=INK, font=small)
    y = top + n * cell + 20
    draw.text((8, y), "worst confusions:" if worst else "no confusions", fill=INK, font=font)
    for w in worst:
        y += 22
        draw.text((20, y), f"{w['true']} -> {w['predicted']}: {w['count']} ({100 * w['share']:.0f}% of "
                           f"{w['true']})", fill=INK, font=font)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def write_metrics(out: Path, history: list[dict]) -> None:
    """``metrics.csv``: one row per epoch."""
    buf = io.StringIO()
    # every key of every row, in first-seen order: a run resumed from an older checkpoint adds columns
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in history for k in row)), restval="")
    w.writeheader()
    w.writerows(history)
    write_text(out / "metrics.csv", buf.getvalue())


def write_records(out: Path, history: list[dict]) -> None:
    """A run's records after each epoch: ``metrics.csv`` and ``curves.png`` (both atomically)."""
    write_metrics(out, history)
    plot_curves(history, out / "curves.png")
