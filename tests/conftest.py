"""Shared fixtures: tiny datasets made in tmp_path (never the real images)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.config import PreprocessConfig, SynthConfig  # noqa: E402
from pipeline.building.preprocess import preprocess  # noqa: E402
from pipeline.tools.synth import generate  # noqa: E402
from pipeline.training.train import train  # noqa: E402
from tests.helpers import plan  # noqa: E402


@pytest.fixture(scope="session")
def lookalike(tmp_path_factory) -> Path:
    """The look-alike set at 1% scale: 42 classes, >= 3 images each, every quirk."""
    root = tmp_path_factory.mktemp("lookalike")
    generate(root, SynthConfig(scale=0.01, seed=0), workers=2)
    return root


@pytest.fixture(scope="session")
def shards32(tmp_path_factory, lookalike) -> Path:
    """Shards of the 1% look-alike at 32 px (small shards: several per split)."""
    out = tmp_path_factory.mktemp("shards32")
    preprocess(lookalike, out, PreprocessConfig(size=32, shard_mb=0.1), workers=2)
    return out


def make_class_tree(root: Path, counts: dict[str, int], size=(40, 30), seed: int = 0) -> Path:
    """A class-folder dataset of small random JPEGs: {class: n_images}."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            px = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(px).save(root / name / f"img_{i:03d}.jpg", quality=90)
    return root


def make_easy_set(root: Path, classes: int = 4, per_class: int = 24, seed: int = 0) -> Path:
    """A small learnable set: look-alike images of the first ``classes`` classes, 64x48 px."""
    from pipeline.tools.synth import CLASS_COUNTS, render

    for c in range(classes):
        d = root / CLASS_COUNTS[c][0]
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            render(seed, c, i, size=(64, 48)).save(d / f"pic_{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def easy_shards(tmp_path_factory) -> Path:
    """4 classes x 24 images at 32 px, 25% val, shards of ~20 images (several per split)."""
    root = make_easy_set(tmp_path_factory.mktemp("easy"))
    out = tmp_path_factory.mktemp("easy_shards")
    preprocess(root, out, PreprocessConfig(size=32, val_frac=0.25, shard_mb=0.06), workers=1)
    return out


@pytest.fixture()
def shards(easy_shards, tmp_path) -> Path:
    """A private copy of the 4-class set (tests corrupt it)."""
    return Path(shutil.copytree(easy_shards, tmp_path / "shards"))


@pytest.fixture(scope="session")
def finished(easy_shards, tmp_path_factory):
    """A finished 2-epoch cnn4conv run."""
    out = tmp_path_factory.mktemp("finished")
    train(easy_shards, plan(out, epochs=2))
    return out
