"""Progressive resizing: the schedule of sides, the device downsample, a short run, resume, the options."""

import csv

import pytest
import torch
from click.testing import CliRunner

import cli
from pipeline.common.config import ConfigError, LoaderConfig, ModelConfig, OptimConfig, RunConfig, TrainPlan, make_plan
from pipeline.training.optim import res_at
from pipeline.training.train import TrainingError, train
from pipeline.reading.transform import DeviceTransform


def test_schedule_is_low_first_then_a_ramp_then_the_stored_side():
    o = OptimConfig(epochs=12, min_res=32, ramp=(0.55, 0.8))
    assert [res_at(o, e, 64) for e in range(12)] == [32] * 7 + [40, 48, 56] + [64] * 2
    # off, or a low side not below the stored one: every epoch at the stored side
    assert {res_at(OptimConfig(epochs=12), e, 64) for e in range(12)} == {64}
    assert {res_at(OptimConfig(epochs=12, min_res=64), e, 64) for e in range(12)} == {64}
    # no ramp epochs: a step from the low side to the stored one
    step = OptimConfig(epochs=4, min_res=16, ramp=(0.5, 0.5))
    assert [res_at(step, e, 32) for e in range(4)] == [16, 16, 32, 32]
    # a run extended with --epochs rebuilds the schedule for the new total, and past the end stays full
    longer = OptimConfig(epochs=24, min_res=32, ramp=(0.55, 0.8))
    assert res_at(longer, 13, 64) == 32 and res_at(longer, 30, 64) == 64


@pytest.mark.parametrize("kw, words", [({"min_res": 30}, "multiple of 8"), ({"min_res": -8}, "min_res"),
                                       ({"ramp": (0.8, 0.5)}, "start <= end"), ({"ramp": (0.1,)}, "ramp"),
                                       ({"ramp": (0.0, 1.5)}, "ramp")])
def test_bad_schedule_values_are_refused(kw, words):
    with pytest.raises(ConfigError, match=words):
        OptimConfig(**kw)


def test_a_checkpoints_list_ramp_becomes_the_same_tuple():
    assert OptimConfig(ramp=[0.25, 0.5]) == OptimConfig(ramp=(0.25, 0.5))


def test_recipe_resizes_only_models_that_pool_globally():
    assert make_plan("resnet").optim.min_res == 32
    assert make_plan("resnet", min_res=0).optim.min_res == 0
    assert make_plan("cnn4conv").optim.min_res == 0 and make_plan("bart", "notebook").optim.min_res == 0
    with pytest.raises(ConfigError, match="pools globally.*drop --min-res"):
        make_plan("bart", min_res=32)


def test_training_batches_are_downsampled_on_the_device_and_validation_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 64, 64, 3), dtype=torch.uint8, generator=g)
    t = DeviceTransform([0.5] * 3, [0.25] * 3, channels_last=True, augment=None)
    t.train_size = 32
    small = t(x.clone(), augment=True)
    assert small.shape == (6, 3, 32, 32) and small.is_contiguous(memory_format=torch.channels_last)
    assert t(x.clone()).shape == (6, 3, 64, 64)  # validation: the stored side
    # antialiased: a one-pixel checkerboard (the finest detail) becomes its mean, not a pattern of aliases
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 200).to(torch.uint8)
    board = board[None, :, :, None].expand(2, 64, 64, 3).contiguous()
    mean = (100 / 255 - 0.5) / 0.25
    assert torch.allclose(t(board, augment=True)[..., 1:-1, 1:-1], torch.full((2, 3, 30, 30), mean), atol=1e-4)
    # with the flip-crop augmentation the output is at the training side too
    aug = DeviceTransform([0.5] * 3, [0.25] * 3, channels_last=True, seed=1)
    aug.train_size = 40
    assert aug(x.clone(), augment=True).shape == (6, 3, 40, 40)


def _plan(out, epochs=4, min_res=16, seed=0):
    return TrainPlan(ModelConfig(name="resnet"), OptimConfig(lr=3e-3, epochs=epochs, min_res=min_res, ramp=(0.5, 0.75)),
                     LoaderConfig(batch_size=16, workers=0, cache="ram", seed=seed),
                     RunConfig(seed=seed, device="cpu", out=str(out)))


def test_a_progressive_run_trains_each_epoch_at_its_side_and_keeps_its_schedule_on_resume(easy_shards, tmp_path):
    full = train(easy_shards, _plan(tmp_path / "a"))
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert [int(r["res"]) for r in rows] == [16, 16, 24, 32]  # 32 px shards: 2 low, one ramp, one full
    # only the epochs at the stored side are validated (and the last, whatever its side)
    assert [r["val_acc"] != "" for r in rows] == [False, False, False, True]
    assert full["best"]["epoch"] == 4 and (tmp_path / "a" / "best.pt").is_file()
    last = train(easy_shards, _plan(tmp_path / "ends-low", epochs=2, min_res=16))  # no epoch at the full 32 px
    assert [h["res"] for h in last["history"]] == [16, 24] and last["history"][-1]["val_f1"] is not None
    assert full["best"]["val_acc"] > 0.5  # 4 classes: chance is 0.25
    # the sides resume exactly (tests/training/test_resume.py); the schedule is part of the recipe a resume continues
    train(easy_shards, _plan(tmp_path / "b"), stop_after=2)
    with pytest.raises(TrainingError, match="min_res"):
        train(easy_shards, _plan(tmp_path / "b", epochs=6, min_res=8), resume=tmp_path / "b" / "last.pt")


def test_a_time_budget_that_ends_the_run_at_low_resolution_still_validates_and_keeps_a_best(easy_shards, tmp_path):
    said = []
    plan = _plan(tmp_path / "c")
    plan = TrainPlan(plan.model, plan.optim, plan.loader, RunConfig(seed=0, device="cpu", out=str(tmp_path / "c"),
                                                                    minutes=1e-4))
    r = train(easy_shards, plan, say=said.append)
    # stopped after epoch 1 (16 px, which alone would not be validated): validated all the same
    assert [h["res"] for h in r["history"]] == [16] and r["history"][0]["val_f1"] is not None
    assert r["best"]["epoch"] == 1 and (tmp_path / "c" / "best.pt").is_file()
    assert any("time budget" in m and "stopping after epoch 1" in m for m in said)


def test_cli_refuses_min_res_for_a_notebook_network_in_one_line(easy_shards, tmp_path):
    r = CliRunner().invoke(cli.main, ["train", "--shards", str(easy_shards), "--model", "cnn4conv",
                                      "--min-res", "16", "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "pools globally" in r.output and not (tmp_path / "run").exists()
    r = CliRunner().invoke(cli.main, ["train", "--shards", str(easy_shards), "--min-res", "12",
                                      "--out", str(tmp_path / "run")])
    assert r.exit_code != 0 and "multiple of 8" in r.output and "Traceback" not in r.output


def test_the_default_recipe_trains_the_narrow_resnet_for_20_epochs_and_widths_are_checked():
    plan = make_plan("resnet")
    assert plan.model.widths == (32, 48, 96, 192) and plan.optim.epochs == 20
    assert [res_at(plan.optim, e, 64) for e in range(20)] == [32] * 9 + [40, 48, 56] + [64] * 8
    assert make_plan("resnet", widths=(32, 64, 128, 256)).model.widths == (32, 64, 128, 256)
    assert make_plan("bart").model.widths == () and make_plan("bart").optim.epochs == 15
    assert ModelConfig(name="resnet", widths=[8, 8, 16, 16]) == ModelConfig(name="resnet", widths=(8, 8, 16, 16))
    with pytest.raises(ConfigError, match="resnet's.*drop --widths"):
        make_plan("cnn4conv", widths=(8, 8, 8, 8))
    for bad in ((8, 8, 16), (8, 8, 16, 0), "8,8,16,16"):
        with pytest.raises(ConfigError, match="widths|width"):
            ModelConfig(name="resnet", widths=bad)


def test_a_run_with_other_widths_saves_them_and_evaluates_and_resumes_with_them(easy_shards, tmp_path):
    from model import count_parameters, create_model
    from pipeline.inference.evaluate import Classifier

    p = _plan(tmp_path / "w", epochs=2)
    plan = TrainPlan(ModelConfig(name="resnet", widths=(8, 8, 16, 16)), p.optim, p.loader, p.run)
    train(easy_shards, plan, stop_after=1)
    ckpt = torch.load(tmp_path / "w" / "last.pt", weights_only=True)
    assert list(ckpt["config"]["model"]["widths"]) == [8, 8, 16, 16]
    clf = Classifier.from_checkpoint(tmp_path / "w" / "last.pt", device="cpu")
    assert count_parameters(clf.model) == count_parameters(create_model("resnet", num_classes=4, image_size=32,
                                                                        widths=(8, 8, 16, 16)))
    # a resume must train the same network: other widths are refused, naming the field
    other = TrainPlan(ModelConfig(name="resnet", widths=(8, 8, 16, 32)), p.optim, p.loader, p.run)
    with pytest.raises(TrainingError, match="widths"):
        train(easy_shards, other, resume=tmp_path / "w" / "last.pt")
    done = train(easy_shards, plan, resume=tmp_path / "w" / "last.pt")
    assert len(done["history"]) == 2 and (tmp_path / "w" / "best.pt").is_file()
    # the command line: --widths given with --resume must be the checkpoint's
    r = CliRunner().invoke(cli.main, ["train", "--resume", str(tmp_path / "w" / "last.pt"), "--widths", "8,8,16,32"])
    assert r.exit_code == 1 and "--widths" in r.output and "drop --widths" in r.output


def test_a_checkpoint_saved_before_widths_were_a_field_loads_as_the_networks_own(easy_shards, tmp_path):
    from pipeline.training.checkpoint import CheckpointError
    from pipeline.inference.evaluate import Classifier

    train(easy_shards, _plan(tmp_path / "old", epochs=1))             # resnet with its own widths
    narrow = _plan(tmp_path / "new", epochs=1)
    train(easy_shards, TrainPlan(ModelConfig(name="resnet", widths=(8, 8, 16, 16)), narrow.optim, narrow.loader,
                                 narrow.run))
    for run, loads in (("old", True), ("new", False)):
        ckpt = torch.load(tmp_path / run / "last.pt", weights_only=True)
        del ckpt["config"]["model"]["widths"]
        torch.save(ckpt, tmp_path / run / "keyless.pt")
        if loads:
            assert Classifier.from_checkpoint(tmp_path / run / "keyless.pt", device="cpu").model.classifier[-1] \
                .in_features == 256
        else:   # the field is what rebuilds the network: without it a narrow one's weights do not fit
            with pytest.raises(CheckpointError, match="do not fit"):
                Classifier.from_checkpoint(tmp_path / run / "keyless.pt", device="cpu")


def test_a_checkpoint_whose_config_is_out_of_range_is_refused_naming_the_file(easy_shards, tmp_path):
    from pipeline.training.checkpoint import CheckpointError, load_checkpoint

    train(easy_shards, _plan(tmp_path / "t", epochs=1))
    ckpt = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    ckpt["config"]["model"]["widths"] = "abc"
    torch.save(ckpt, tmp_path / "t" / "tampered.pt")
    with pytest.raises(CheckpointError, match="tampered.pt.*model config: widths"):
        load_checkpoint(tmp_path / "t" / "tampered.pt", for_resume=True)
