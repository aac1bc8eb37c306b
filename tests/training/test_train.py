import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cli
from model import count_parameters, create_model
from pipeline.training import runtime
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, PreprocessConfig, RunConfig
from pipeline.inference.evaluate import Classifier, evaluate_shards, predict_paths
from pipeline.building.preprocess import preprocess
from pipeline.training.checkpoint import CheckpointError, load_checkpoint
from pipeline.training.train import TrainingError, TrainPlan, train
from pipeline.shardset.shard_format import open_set
from tests.conftest import make_easy_set


def _plan(out, epochs=2, model="cnn4conv", workers=0, cache="ram", amp=False, lr=3e-3, seed=0):
    return TrainPlan(ModelConfig(name=model), OptimConfig(lr=lr, epochs=epochs),
                     LoaderConfig(batch_size=16, workers=workers, cache=cache, seed=seed),
                     RunConfig(seed=seed, device="cpu", amp=amp, out=str(out)))


@pytest.fixture(scope="module")
def trained(easy_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(easy_shards, _plan(out, epochs=4)), out


def test_training_lowers_the_loss_and_beats_chance(trained):
    summary, out = trained
    h = summary["history"]
    assert len(h) == 4
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert summary["best"]["val_acc"] > 0.6  # chance is 0.25 with 4 classes
    for name in ("last.pt", "best.pt", "metrics.csv", "config.json", "curves.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 4 and {"val_f1", "data_wait", "images_per_s"} <= rows[0].keys()
    assert Image.open(out / "curves.png").size == (1200, 560)


def test_checkpoint_is_weights_only_and_complete(trained):
    _, out = trained
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["epoch"] == 3 and len(ck["class_names"]) == 4
    assert ck["position"] == {"epoch": 4, "step": 0, "sums": None} and ck["precision"] == "fp32"
    assert {"model", "optimizer", "scaler", "rng", "mean", "std", "config", "format"} <= ck.keys()
    assert ck["config"]["model"]["image_size"] == 32


def test_same_seed_same_loss_curve_and_another_seed_another(easy_shards, tmp_path):
    # resume equals the uninterrupted run: tests/training/test_resume.py
    full = train(easy_shards, _plan(tmp_path / "a", epochs=3, workers=2, cache="none"))["history"]
    again = train(easy_shards, _plan(tmp_path / "b", epochs=3, workers=2, cache="none"))["history"]
    other = train(easy_shards, _plan(tmp_path / "c", epochs=3, workers=2, cache="none", seed=1))["history"]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1")
    assert [[r[k] for k in keys] for r in full] == [[r[k] for k in keys] for r in again]
    assert [r["train_loss"] for r in full] != [r["train_loss"] for r in other]


def test_cpu_amp_path_runs(easy_shards, tmp_path):
    s = train(easy_shards, _plan(tmp_path, epochs=1, model="bart", amp=True))
    assert s["amp"] == ("bfloat16" if runtime.cpu_has_fast_bf16() else "fp32")
    assert np.isfinite(s["history"][0]["train_loss"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(easy_shards, tmp_path, monkeypatch):
    train(easy_shards, _plan(tmp_path, epochs=3), stop_after=1)
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(TrainingError, match="loss became nan"):
        train(easy_shards, _plan(tmp_path, epochs=3), resume=tmp_path / "last.pt")
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0


def test_shard_sizes_follow_one_rule(tmp_path):
    root = make_easy_set(tmp_path / "data", classes=2, per_class=4)
    with pytest.raises(ValueError, match="multiple of 16"):  # preprocess refuses what train would
        preprocess(root, tmp_path / "s24", PreprocessConfig(size=24), workers=1)


def test_resume_on_other_shards_is_refused(trained, tmp_path):
    _, out = trained
    root = make_easy_set(tmp_path / "data", classes=3, per_class=4)
    preprocess(root, tmp_path / "s", PreprocessConfig(size=32), workers=1)
    with pytest.raises(TrainingError, match="differ"):
        train(tmp_path / "s", _plan(tmp_path / "run"), resume=out / "last.pt")


def test_evaluate_and_predict(trained, easy_shards, tmp_path):
    _, out = trained
    clf = Classifier.from_checkpoint(out / "best.pt", "cpu")
    rep = evaluate_shards(clf, easy_shards, "val", tmp_path)
    assert rep["accuracy"] > 0.6 and 0 < rep["macro_f1"] <= 1
    assert (tmp_path / "confusion_matrix.png").is_file()
    assert set(rep["per_class"]) <= set(clf.class_names)
    probs = clf.predict_proba(np.zeros((3, 32, 32, 3), dtype=np.uint8))
    assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert all(p in clf.class_names for p in clf.predict(np.zeros((2, 32, 32, 3), dtype=np.uint8)))

    # raw images: class folders, and the public test set's flat layout with an unknown class
    data = make_easy_set(tmp_path / "raw", classes=4, per_class=3, seed=9)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(data.rglob("*.jpg"))):
        p_class = p.parent.name
        (flat / f"{p_class}_{i}.jpg").write_bytes(p.read_bytes())
    (flat / "mr_teeny_1.jpg").write_bytes(p.read_bytes())
    r = CliRunner().invoke(cli.main, ["evaluate", str(out / "best.pt"), "--data-dir", str(flat),
                                      "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert "12 images" in r.output and "mr_teeny" in r.output
    r = CliRunner().invoke(cli.main, ["evaluate", str(out / "best.pt"), "--data-dir", str(data),
                                      "--out", str(tmp_path / "ev2")])
    assert r.exit_code == 0 and "12 images" in r.output

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = predict_paths(clf, [data, bad], top_k=2)
    assert len(res) == 13 and "error" in res[-1]
    assert all(len(r["top"]) == 2 for r in res[:-1])
    r = CliRunner().invoke(cli.main, ["predict", str(out / "best.pt"), str(bad), str(next(data.rglob("*.jpg")))])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and lines[0].startswith(f"{bad}: ERROR ") and len(lines) == 2
    good = lines[1].split(": ", 1)[1].split(", ")        # the other image: its top 3 classes, name and probability
    assert len(good) == 3 and all(g.split(" ")[0] in clf.class_names and 0 <= float(g.split(" ")[1]) <= 1 for g in good)


def test_cli_train_runs_and_reports(easy_shards, tmp_path):
    r = CliRunner().invoke(cli.main, ["train", "--shards", str(easy_shards), "--model", "cnn4conv", "--epochs", "1",
                                      "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    sset = open_set(easy_shards)
    params = count_parameters(create_model("cnn4conv", num_classes=4, image_size=32))
    assert (f"model cnn4conv: {params:,} parameters, 32x32 px, 4 classes, {sset.counts['train']} train / "
            f"{sset.counts['val']} val images") in r.output and "best epoch 1" in r.output
    r = CliRunner().invoke(cli.main, ["train", "--shards", str(tmp_path / "none")])
    assert r.exit_code == 1 and "no manifest.json" in r.output
    r = CliRunner().invoke(cli.main, ["evaluate", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and "no such checkpoint" in r.output


class _Payload:
    """Not data: a pickle that would run code on load."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_load_as_data_only(tmp_path):
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this tool.*refused unread"):
        load_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint of this tool"):
        load_checkpoint(tmp_path / "junk.pt")
    r = CliRunner().invoke(cli.main, ["predict", str(tmp_path / "evil.pt"), str(tmp_path)])
    assert r.exit_code == 1 and "not a checkpoint of this tool" in r.output and "must never run" not in r.output


def test_a_time_budget_stops_before_an_epoch_that_would_end_past_it(easy_shards, tmp_path):
    said = []
    plan = TrainPlan(ModelConfig(name="cnn4conv"), OptimConfig(epochs=5), LoaderConfig(batch_size=16, workers=0),
                     RunConfig(device="cpu", out=str(tmp_path), minutes=1e-4))
    s = train(easy_shards, plan, say=said.append)
    assert [h["epoch"] for h in s["history"]] == [1] and any("time budget" in m for m in said)
    row = s["history"][0]   # the run's clock counts training, validation and checkpoints: more than training
    assert row["wall_s"] > row["seconds"] and 0 <= row["val_f1_small"] <= 1  # 4 classes of 24 images
