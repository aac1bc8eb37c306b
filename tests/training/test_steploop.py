"""The run's position and the epoch's running sums: what a checkpoint stores and what an epoch reports."""

import math

import pytest
import torch

from pipeline.training.steploop import EpochSums, PartialEpoch, RunPosition


def test_position_round_trips_as_plain_data_in_the_checkpoint_layout():
    p = RunPosition(2, 5, PartialEpoch(loss=12.5, correct=30, seen=40, wait=0.25, seconds=3.0))
    d = p.to_dict()
    assert d == {"epoch": 2, "step": 5, "sums": {"loss": 12.5, "correct": 30, "seen": 40, "wait": 0.25,
                                                 "seconds": 3.0}}
    assert RunPosition.from_dict(d) == p
    assert RunPosition.from_dict({"epoch": 4, "step": 0, "sums": None}) == RunPosition(4)
    assert RunPosition(4).to_dict() == {"epoch": 4, "step": 0, "sums": None}   # what last.pt has held since -2
    with pytest.raises(KeyError):
        RunPosition.from_dict({"step": 0})


def test_the_loader_state_is_mid_epoch_only_inside_the_interrupted_epoch():
    p = RunPosition(2, 5)
    assert p.loader_state(2) == {"epoch": 2, "batch": 5}
    assert p.loader_state(3) == {"epoch": 3, "batch": 0}


def test_sums_skip_non_finite_steps_and_count_them():
    s = EpochSums(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    s.add(torch.tensor(0.5), logits, labels, None)
    s.add(torch.tensor(float("nan")), logits, labels, None)               # counted bad, adds no loss
    s.add(torch.tensor(float("inf")), logits, labels, torch.tensor(False))  # the scaler skipped it: not bad
    assert int(s.bad) == 1 and s.seen == 9 and int(s.correct) == 6
    assert math.isclose(float(s.loss), 1.5)
    st = s.stats(wait=1.0, seconds=4.0)
    assert st == {"train_loss": 1.5 / 9, "train_acc": 6 / 9, "seconds": 4.0, "images_per_s": 9 / 4.0,
                  "data_wait": 0.25}


def test_carried_sums_continue_on_rank_0_only_and_clocks_on_every_rank():
    part = PartialEpoch(loss=3.0, correct=4, seen=8, wait=0.5, seconds=2.0)
    r0, r1 = EpochSums(torch.device("cpu"), part, rank=0), EpochSums(torch.device("cpu"), part, rank=1)
    assert (float(r0.loss), int(r0.correct), r0.seen) == (3.0, 4, 8)
    assert (float(r1.loss), int(r1.correct), r1.seen) == (0.0, 0, 0)
    assert r0.carried_wait == r1.carried_wait == 0.5 and r0.carried_seconds == r1.carried_seconds == 2.0
    assert r0.partial(wait=0.25, seconds=3.0) == PartialEpoch(3.0, 4, 8, 0.75, 3.0)
