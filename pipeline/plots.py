"""Plots drawn with PIL (matplotlib would pull Pillow over Pillow-SIMD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import atomic_write

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _panel(draw: ImageDraw.ImageDraw, box, series: dict[str, list[float]], title: str, font) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0, y0 - 22), title, fill=(0, 0, 0), font=font)
    values = [v for s in series.values() for v in s if np.isfinite(v)]
    if not values:
        return
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    n = max(len(s) for s in series.values())
    for k in range(5):  # y grid with labels
        v = lo + (hi - lo) * k / 4
        y = y1 - (y1 - y0) * k / 4
        draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
        draw.text((x0 - 58, y - 8), f"{v:.3g}", fill=(0, 0, 0), font=font)
    for i, (name, s) in enumerate(series.items()):
        pts = [(x0 + (x1 - x0) * (j / max(1, n - 1)), y1 - (y1 - y0) * (v - lo) / (hi - lo))
               for j, v in enumerate(s) if np.isfinite(v)]
        color = COLORS[i % len(COLORS)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=3)
        for p in pts:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
        draw.text((x1 - 150, y0 + 8 + 20 * i), name, fill=color, font=font)
    draw.text(((x0 + x1) / 2 - 20, y1 + 6), f"epoch (1..{n})", fill=(0, 0, 0), font=font)


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and val, as one PNG."""
    img = Image.new("RGB", (1200, 500), "white")
    draw = ImageDraw.Draw(img)
    font = _font(15)
    col = lambda k: [float("nan") if h[k] is None else float(h[k]) for h in history]  # None: no val split
    _panel(draw, (80, 50, 560, 440), {"train loss": col("train_loss"), "val loss": col("val_loss")}, "loss", font)
    _panel(draw, (700, 50, 1180, 440), {"train acc": col("train_acc"), "val acc": col("val_acc"),
                                        "val macro-F1": col("val_f1")}, "accuracy", font)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def plot_confusion(cm: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix with class names, as one PNG."""
    n = len(names)
    cell = max(14, min(40, 900 // max(1, n)))
    font = _font(max(10, cell - 4))
    margin = 12 + max(len(s) for s in names) * (cell // 2 + 1)
    side = margin + n * cell + 20
    img = Image.new("RGB", (side, side + 30), "white")
    draw = ImageDraw.Draw(img)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    for i in range(n):
        draw.text((4, margin + i * cell + 1), names[i], fill=(0, 0, 0), font=font)
        for j in range(n):
            v = norm[i, j]
            shade = int(255 * (1 - v))
            draw.rectangle([margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
                            margin + (i + 1) * cell - 1], fill=(shade, shade, 255))
    label = Image.new("RGB", (margin, n * cell), "white")  # column names, rotated
    ld = ImageDraw.Draw(label)
    for j in range(n):
        ld.text((4, j * cell + 1), names[j], fill=(0, 0, 0), font=font)
    img.paste(label.rotate(90, expand=True), (margin, 0))
    draw.text((margin, side + 5), "rows: true class, columns: predicted (row-normalised)", fill=(0, 0, 0), font=_font(14))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
