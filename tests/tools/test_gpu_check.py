"""The prepared GPU check (benchmarks/gpu_check.py) rehearsed on the CPU, so the script cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.training.runtime import Precision

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ["env", "cuda-tests", "data", "preprocess", "sync-debug", "train bart --cache device",
         "train bart --cache none", "train resnet --cache device", "train resnet --cache none", "bench", "export",
         "predict --onnx"]


def test_the_dry_run_runs_every_step_on_the_cpu_and_reports_them(tmp_path):
    out = tmp_path / "check"
    p = subprocess.run([sys.executable, str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True,
                       timeout=540)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] is True and report["sizes"]["device"] == "cpu" and report["sizes"]["size"] == 32
    assert [s["name"] for s in report["steps"]] == STEPS
    assert [s["rc"] for s in report["steps"]] == [0] * len(STEPS)
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["env"]["figures"]["device"] == "cpu" and steps["env"]["figures"]["dry_run"] is True
    precision = Precision(torch.device("cpu"), True).name
    train_images = json.loads((out / "shards32" / "manifest.json").read_text())["counts"]["train"]
    for name in STEPS[5:9]:
        f = steps[name]["figures"]
        assert f["epochs"] == 1 and f["precision"] == precision and 0.0 <= f["data_wait"] <= 1.0
        assert f["images_per_s"] * f["seconds"] == pytest.approx(train_images)   # one epoch of the train split
        assert "peak_gpu_mb" not in f             # a CUDA-only column: CPU rows are unchanged
    assert steps["bench"]["figures"]["device"] == "cpu"
    assert steps["bench"]["figures"]["training"]["fp32"]["dtype"] == "float32"
    assert (out / "bart.onnx").stat().st_size > 10_000
    log = (out / "gpu_check.log").read_text()
    for name in STEPS[1:]:
        assert f"[{name}: rc 0," in log
    assert "sync_debug=error epoch:" in log
    lines = p.stdout.strip().splitlines()
    assert lines[0].split() == ["step", "rc", "s", "figures"] and len(lines) == len(STEPS) + 2
    assert lines[-1].startswith("passed in ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_real_run_says_so_in_one_line_and_fails(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "check")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["gpu_check: no CUDA device on this machine; run it on a GPU machine, "
                                             "or --dry-run to rehearse on the CPU"]
    assert not (tmp_path / "check").exists()
