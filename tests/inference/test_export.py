"""ONNX export: every architecture, checked against ONNX Runtime on decoded images, metadata, bad input."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import cli
from pipeline.inference import export as export_module
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig
from pipeline.inference.evaluate import Classifier, predict_paths
from pipeline.inference.export import OnnxClassifier, export_onnx
from pipeline.shardset.shard_format import file_sha256, open_set
from pipeline.training.train import TrainPlan, train
from tests.conftest import make_easy_set


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image files decoded by the exported model's metadata (not shard pixels)."""
    return make_easy_set(tmp_path_factory.mktemp("raw"), classes=4, per_class=3, seed=7)


@pytest.fixture(scope="module", params=["cnn4conv", "bart", "resnet"])
def exported(request, easy_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"run-{request.param}")
    plan = TrainPlan(ModelConfig(name=request.param), OptimConfig(lr=3e-3, epochs=1, ema=0.9),
                     LoaderConfig(batch_size=16, workers=0, cache="ram", seed=0),
                     RunConfig(seed=0, device="cpu", out=str(out), tta=request.param == "resnet"))
    train(easy_shards, plan)
    r = export_onnx(out / "best.pt", out / "model.onnx")
    return request.param, out, r


def test_onnx_runtime_equals_pytorch_on_decoded_images_and_the_metadata_round_trips(exported, images, easy_shards):
    name, out, r = exported
    assert (out / "model.onnx").stat().st_size == r["bytes"] and not (out / "model.onnx.tmp").exists()
    assert r["max_prob_diff"] <= export_module.PROB_TOL
    assert r["check_images"] == min(export_module.CHECK_IMAGES, open_set(easy_shards).counts["val"])
    clf = Classifier.from_checkpoint(out / "best.pt", device="cpu")
    onx = OnnxClassifier.load(out / "model.onnx")
    sset = open_set(easy_shards)
    assert onx.class_names == clf.class_names == sset.class_names
    assert (onx.image_size, onx.fit, onx.min_side) == (32, "squash", 16)
    meta = onx.metadata
    assert meta["model"] == name and meta["checkpoint_sha256"] == file_sha256(out / "best.pt")
    assert meta["averaged_weights"] == "true" and meta["tta"] == ("true" if name == "resnet" else "false")
    np.testing.assert_allclose(json.loads(meta["mean"]), sset.mean, rtol=1e-6)
    assert meta["project_version"] == "0.1.0"
    # real files, decoded from their bytes by each side's own loader, any batch size
    paths = sorted(images.rglob("*.jpg"))
    batch = np.stack([onx.load_image(p) for p in paths])
    assert np.array_equal(batch, np.stack([clf.load_image(p) for p in paths]))
    for n in (1, len(batch)):
        np.testing.assert_allclose(onx.predict_proba(batch[:n]), clf.predict_proba(batch[:n]), atol=1e-5)
    assert onx.predict(batch) == clf.predict(batch)
    # the graph takes uint8 NHWC and gives probabilities and logits
    sess = ort.InferenceSession(str(out / "model.onnx"))
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("images", "tensor(uint8)")]
    assert sess.get_inputs()[0].shape[1:] == [32, 32, 3]
    probs, logits = sess.run(None, {"images": batch})
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)
    # predict --onnx prints what predict with the checkpoint prints
    a = predict_paths(onx, paths[:3])
    b = predict_paths(clf, paths[:3])
    assert [x["top"][0][0] for x in a] == [x["top"][0][0] for x in b]


@pytest.mark.parametrize("exported", ["cnn4conv"], indirect=True)
def test_a_mismatch_is_an_error_and_writes_nothing(exported, monkeypatch, tmp_path):
    _, out, _ = exported
    monkeypatch.setattr(export_module, "PROB_TOL", -1.0)
    with pytest.raises(export_module.ExportError, match="differs from PyTorch"):
        export_onnx(out / "best.pt", tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exported", ["cnn4conv"], indirect=True)
def test_cli_export_predict_and_bad_input(exported, images, tmp_path):
    name, out, _ = exported
    runner = CliRunner()
    r = runner.invoke(cli.main, ["export", str(out / "last.pt"), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "ONNX Runtime = PyTorch within" in r.output
    img = sorted(images.rglob("*.jpg"))[0]
    r = runner.invoke(cli.main, ["predict", "--onnx", str(tmp_path / "m.onnx"), str(img)])
    r2 = runner.invoke(cli.main, ["predict", str(out / "last.pt"), str(img)])
    assert r.exit_code == 0 and r2.exit_code == 0, r.output + r2.output
    top = lambda text: text.split(": ", 1)[1].split(" ")[0]
    assert top(r.output) == top(r2.output)
    # a foreign, a truncated and a missing checkpoint: one line each, nothing written
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out / "best.pt").read_bytes()[:5000])
    for bad in (foreign, truncated, tmp_path / "missing.pt"):
        r = runner.invoke(cli.main, ["export", str(bad), "--out", str(tmp_path / "x.onnx")])
        assert r.exit_code == 1 and r.output.count("\n") == 1 and r.output.startswith("error: "), r.output
        assert str(bad) in r.output
    assert not (tmp_path / "x.onnx").exists()
    # an --onnx file that is not one, a folder as --out, shards that moved
    r = runner.invoke(cli.main, ["predict", "--onnx", str(foreign), str(img)])
    assert r.exit_code == 1 and "not an ONNX model" in r.output
    r = runner.invoke(cli.main, ["export", str(out / "best.pt"), "--out", str(tmp_path)])
    assert r.exit_code == 1 and "is a folder" in r.output
    r = runner.invoke(cli.main, ["export", str(out / "best.pt"), "--out", str(tmp_path / "y.onnx"),
                                 "--shards", str(tmp_path / "nowhere")])
    assert r.exit_code == 1 and "pass --shards" in r.output and not (tmp_path / "y.onnx").exists()


def test_without_the_extra_export_says_how_to_get_it(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(export_module.ExportError, match=r"pip install '\.\[export\]'"):
        export_onnx(tmp_path / "any.pt", tmp_path / "m.onnx")
