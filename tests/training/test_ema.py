"""The moving average of the weights: its update, and a run that validates, keeps, predicts and resumes with it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from pipeline.training.checkpoint import load_checkpoint
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig
from pipeline.inference.evaluate import Classifier, evaluate_shards
from pipeline.training.optim import WeightEma
from pipeline.shardset.shard_format import open_set
from pipeline.training.train import TrainPlan, train

KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_f1")


def test_the_average_follows_its_formula_and_copies_integer_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = WeightEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()
    d = min(0.9, 2 / 11)  # the warm-up: the first average follows the model closely
    got = ema.module.state_dict()
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(got[k], d * start[k] + (1 - d) * v), k
    assert int(got["1.num_batches_tracked"]) == 7
    assert not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(200):
        ema.update()
    assert ema.updates == 201
    assert all(torch.allclose(got[k], v, atol=1e-5) for k, v in model.state_dict().items())  # converged
    other = WeightEma(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 201


def _plan(out, cache="ram", workers=0):
    return TrainPlan(ModelConfig(name="cnn4conv"), OptimConfig(lr=3e-3, epochs=3, ema=0.9),
                     LoaderConfig(batch_size=16, workers=workers, cache=cache, seed=0),
                     RunConfig(seed=0, device="cpu", out=str(out)))


def test_a_run_validates_keeps_and_predicts_with_the_average(easy_shards, tmp_path):
    full = train(easy_shards, _plan(tmp_path / "full"))
    last = load_checkpoint(tmp_path / "full" / "last.pt")
    assert all(torch.equal(v, last["ema"]["weights"][k]) for k, v in full["averaged"].state_dict().items())
    best = load_checkpoint(tmp_path / "full" / "best.pt", for_resume=True)
    steps = -(-len(open_set(easy_shards).split("train")) // 16)
    assert best["ema"]["updates"] == (best["epoch"] + 1) * steps  # one update per optimiser step
    weights, averaged = best["model"], best["ema"]["weights"]
    assert any(not torch.equal(weights[k], averaged[k]) for k in weights)  # two different sets of weights
    clf = Classifier.from_checkpoint(tmp_path / "full" / "best.pt", "cpu")
    assert all(torch.equal(v, averaged[k]) for k, v in clf.model.state_dict().items())  # inference: the average
    rep = evaluate_shards(clf, easy_shards, "val", tmp_path / "eval")
    assert rep["accuracy"] == pytest.approx(full["best"]["val_acc"])  # what validation scored
    plain = train(easy_shards, replace(_plan(tmp_path / "plain"), optim=OptimConfig(lr=3e-3, epochs=3)))
    assert [r["train_loss"] for r in plain["history"]] == [r["train_loss"] for r in full["history"]]  # same training
    assert plain["averaged"] is None and plain["model"] is not None
    assert [r["val_loss"] for r in plain["history"]] != [r["val_loss"] for r in full["history"]]  # other weights scored
    # the average resumes exactly: tests/training/test_resume.py


def test_the_default_recipe_averages_the_notebooks_do_not_and_the_option_is_checked(tmp_path):
    from click.testing import CliRunner

    import cli
    from pipeline.common.config import ConfigError, make_plan

    assert make_plan("resnet").optim.ema == 0.995
    assert make_plan("bart", "notebook").optim.ema == 0.0 and make_plan("cnn4conv", "notebook").optim.ema == 0.0
    assert make_plan("resnet", ema=0.0).optim.ema == 0.0
    with pytest.raises(ConfigError, match=r"ema must be a finite number in \[0, 1\)"):
        OptimConfig(ema=1.0)
    r = CliRunner().invoke(cli.main, ["train", "--ema", "1", "--shards", str(tmp_path)])
    assert r.exit_code == 2 and "is not a finite number in [0, 1)" in r.output
    # with --resume, --ema must equal the checkpoint's (tests/test_faults.py: a different one is refused)
    r = CliRunner().invoke(cli.main, ["train", "--resume", str(tmp_path / "last.pt"), "--ema", "0.9"])
    assert r.exit_code == 1 and "no such checkpoint" in r.output
