"""Readable results: round ticks, the plots written and non-empty, worst confusions, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.training.metrics import predict_logits
from pipeline.training.plots import nice_ticks, plot_confusion, plot_curves, worst_confusions


@pytest.mark.parametrize("lo,hi,expected", [(0.13, 0.97, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                                             (1.2345, 3.71, [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]),
                                             (0.8812, 0.9534, [0.88, 0.9, 0.92, 0.94, 0.96])])
def test_axis_ticks_are_round_and_cover_the_data(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def _ink(path) -> float:
    px = np.asarray(Image.open(path).convert("L"))
    return float((px < 200).mean())


def test_curves_and_confusion_are_written_and_drawn(tmp_path):
    hist = [{"train_loss": 3 - e / 5, "val_loss": 3.1 - e / 6, "train_acc": e / 15, "val_acc": e / 16,
             "val_f1": None if e == 0 else e / 20} for e in range(15)]
    plot_curves(hist, tmp_path / "curves.png")
    im = Image.open(tmp_path / "curves.png")
    assert im.size == (1200, 560) and 0.01 < _ink(tmp_path / "curves.png") < 0.3
    names = ["homer_simpson", "charles_montgomery_burns", "disco_stu"]
    cm = np.array([[50, 3, 0], [7, 20, 1], [0, 0, 1]])
    plot_confusion(cm, names, tmp_path / "cm.png")
    im = Image.open(tmp_path / "cm.png")
    assert im.width > 300 and im.height > 300 and _ink(tmp_path / "cm.png") > 0.02
    dark = np.asarray(im.convert("RGB"))[..., 0] < 60  # the diagonal's dark cells are there
    assert dark.sum() > 100


def test_worst_confusions_are_the_largest_off_diagonal_cells():
    cm = np.array([[50, 3, 0], [7, 20, 1], [0, 2, 1]])
    w = worst_confusions(cm, ["a", "b", "c"], k=3)
    assert [(x["true"], x["predicted"], x["count"]) for x in w] == [("b", "a", 7), ("a", "b", 3), ("c", "b", 2)]
    assert w[0]["share"] == pytest.approx(7 / 28)


def test_test_time_flip_averages_the_mirror_image():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    x = torch.randn(5, 3, 4, 4)
    assert torch.allclose(predict_logits(model, x, tta=True), (model(x) + model(x.flip(3))) / 2)
    assert torch.equal(predict_logits(model, x), model(x))





def test_a_tta_run_validates_and_predicts_with_the_flip(easy_shards, tmp_path):
    from pipeline.common.config import make_plan
    from pipeline.inference.evaluate import Classifier
    from pipeline.training.train import train

    s = train(easy_shards, make_plan("cnn4conv", epochs=1, device="cpu", workers=0, tta=True, out=str(tmp_path)))
    assert s["config"]["run"]["tta"] is True and 0 <= s["history"][0]["val_acc"] <= 1
    clf = Classifier.from_checkpoint(tmp_path / "last.pt", "cpu")
    assert clf.tta
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x = clf.transform(torch.from_numpy(images))
    with torch.no_grad():
        expected = torch.softmax((clf.model(x) + clf.model(x.flip(3))) / 2, 1).numpy()
    assert np.allclose(clf.predict_proba(images), expected, atol=1e-5)
