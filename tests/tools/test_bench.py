import json
import statistics

from click.testing import CliRunner

import cli


def test_quick_bench_runs_every_stage_and_writes_json(lookalike, tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli.main, ["bench", "--quick", "--data-dir", str(lookalike), "--size", "32",
                                      "--model", "cnn4conv", "--limit", "160", "--json", str(out)])
    assert r.exit_code == 0, r.output
    for line in ("1. preprocess", "decode limit", "2. one epoch of loading", "3. cnn4conv training step",
                 "DataLoader / notebooks'"):
        assert line in r.output
    data = json.loads(out.read_text())
    assert data["config"]["quick"] is True and data["config"]["size"] == 32
    assert {"pillow_simd", "libjpeg_turbo", "cpu_model", "torch", "h5py"} <= data["environment"].keys()
    pre = data["preprocess"]
    assert 100 < pre["project"]["images"] <= pre["notebook_loop"]["images"]  # the project drops duplicates
    assert pre["ratio"] == pre["project"]["images_per_s"] / pre["notebook_loop"]["images_per_s"]
    assert pre["project"]["peak_mb"] >= 20.0   # a Python process with numpy and h5py loaded, measured by ru_maxrss
    # the decode limit decodes what the loop decodes (minus nothing: same files, same decoder errors)
    assert pre["decode_limit"]["images"] == pre["notebook_loop"]["images"]
    assert abs(pre["limit_ratio"] - pre["decode_limit"]["images_per_s"] / pre["notebook_loop"]["images_per_s"]) < 1e-9
    # the main process's CPU per image, and what it caps on more cores (the decode limit scales, it does not)
    assert 0 < pre["main_cpu_us_per_image"] == pre["project"]["main_cpu_us_per_image"]
    c16, c64 = pre["ceilings"]["16"], pre["ceilings"]["64"]
    assert abs(c64["decode_limit"] - 4 * c16["decode_limit"]) < 1e-6
    assert c16["main_process_cap"] == c64["main_process_cap"]
    assert abs(c16["main_process_cap"] - 1e6 / pre["main_cpu_us_per_image"]) < 1e-6
    assert "main process CPU per image" in r.output and "on 64 cores" in r.output
    # which part of the build costs what, from the same run, and the ratio reachable with decoding at the limit
    ph = pre["project"]["phases"]
    assert ph["decode_s"] > 0 and ph["before_s"] > 0 and ph["after_s"] >= ph["shards_s"] > 0
    assert ph["before_s"] + ph["decode_s"] + ph["after_s"] <= pre["project"]["seconds"] + 1e-6
    limit_s = pre["project"]["images"] / pre["decode_limit"]["images_per_s"]
    assert abs(pre["best_vs_limit"] - limit_s / (limit_s + ph["before_s"] + ph["after_s"])) < 1e-9
    assert 0 < pre["best_vs_limit"] < 1 and "best reachable / decode limit" in r.output
    rates = data["loading"]["images_per_s"]
    assert set(rates) >= {"project_dataloader", "project_resident", "notebook_loader", "decode_every_epoch",
                          "memory_limit_gather"}
    rounds = data["loading"]["rounds"]
    assert all(rates[k] == statistics.median(rounds[k]) for k in rates if k in rounds)
    gathers = data["loading"]["rounds"]
    assert gathers["memory_limit_gather"] == [max(a, b) for a, b in zip(gathers["memory_limit_numpy"],
                                                                        gathers["memory_limit_torch"])]
    rounds = data["loading"]["rounds"]  # interleaved rounds (2 with --quick), ratios taken within a round
    assert all(len(r) == 2 for r in rounds.values())
    within = sorted(a / b for a, b in zip(rounds["project_dataloader"], rounds["notebook_loader"]))
    assert abs(data["loading"]["dataloader_vs_notebook"] - sum(within) / 2) < 1e-9
    fp32 = data["training"]["fp32"]
    assert fp32["dtype"] == "float32" and fp32["cache"] == "ram" and set(fp32) == {
        "dtype", "compute_images_per_s", "end_to_end_images_per_s", "data_wait_share", "cache"}
    assert 0 <= data["training"]["fp32"]["data_wait_share"] < 1
