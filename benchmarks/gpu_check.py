"""The prepared GPU check: one script that proves the CUDA path on a lent GPU machine.

    python benchmarks/gpu_check.py OUT_DIR              # on a CUDA machine (8 min on one H200)
    python benchmarks/gpu_check.py OUT_DIR --dry-run    # every step on the CPU at tiny sizes (CI runs it)

It runs with the machine's own Python and assumes only what such a machine
ships: PyTorch with CUDA, h5py, Pillow, numpy, click, tqdm, scikit-learn
and onnxruntime (plus onnx/onnxscript for ``export``). pytest, for the CUDA
tests, may be missing there: fetch its wheels here first, into the ignored
folder ``benchmarks/gpu_wheels/`` (``pip download -d benchmarks/gpu_wheels
pytest``), and carry that folder; the script installs them with
``--no-index`` into ``OUT_DIR/pylib``.

Steps (each a command of the project, run as a user would, with its own
time limit; a step past the whole budget is skipped, and says so):

1. ``env``: Python, torch, CUDA device, native bf16, which packages exist.
2. ``cuda-tests``: ``pytest -m cuda`` (the tests CPU runs skip: two epochs
   with ``sync_debug="error"``, device-resident and streamed, then resume).
3. ``data``: the look-alike set generated on the machine (``synth --scale
   0.5``: 8,382 images of 42 classes, about 250 MB; nothing large travels).
4. ``preprocess --size 128``.
5. ``sync-debug``: one epoch of BART through the library's ``train`` on
   those shards with ``sync_debug="error"`` (any host sync in the step loop
   raises).
6. ``train --amp`` for BART and the default model, each with ``--cache
   device`` and ``--cache none``, 2 epochs: img/s, data wait, peak GPU
   memory and the precision (bf16 or fp16) of the last epoch, from the
   run's ``metrics.csv`` and ``config.json``.
7. ``bench --size 128`` (the device column included).
8. ``export`` of the BART run (which checks the file against ONNX Runtime)
   and ``predict --onnx`` on a few images.

Writes ``OUT_DIR/gpu_check.json`` (every step: command, exit code,
seconds, figures) and ``OUT_DIR/gpu_check.log`` (every command's output),
and prints a summary table. Exit 0 when every step passed. Without CUDA
(and without ``--dry-run``) it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "gpu_wheels"
PACKAGES = ("torch", "numpy", "h5py", "PIL", "click", "tqdm", "sklearn", "onnx", "onnxscript", "onnxruntime",
            "pytest")


@dataclass(frozen=True)
class Sizes:
    """What the run does at full size (a GPU) or in rehearsal (--dry-run, on the CPU)."""

    scale: float          # of the look-alike set (1.0: 16,764 images)
    size: int             # stored side in pixels
    epochs: int
    device: str
    budget_s: float       # the whole check; steps that would start past it are skipped
    bench: tuple = ()     # extra bench options
    train: tuple = ()     # extra train options


FULL = Sizes(scale=0.5, size=128, epochs=2, device="cuda", budget_s=480.0)
DRY = Sizes(scale=0.01, size=32, epochs=1, device="cpu", budget_s=600.0, bench=("--quick",),
            train=("--batch-size", "16"))


@dataclass
class Step:
    name: str
    command: list
    rc: Optional[int] = None
    seconds: float = 0.0
    figures: dict = field(default_factory=dict)
    note: str = ""


class Check:
    """Runs the steps, logs their output, keeps the record."""

    def __init__(self, out: Path, sizes: Sizes) -> None:
        self.out, self.sizes = out, sizes
        self.log = open(out / "gpu_check.log", "w", encoding="utf-8")
        self.steps: list[Step] = []
        self.t0 = time.monotonic()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        # where pytest goes if it must be installed from carried wheels (ensure_pytest)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(out / "pylib"), self.env.get("PYTHONPATH")]))

    def left(self) -> float:
        return self.sizes.budget_s - (time.monotonic() - self.t0)

    def run(self, name: str, args: list, limit: float) -> Step:
        """Run ``python ARGS`` in the project's root, at most ``limit`` seconds and within the budget."""
        cmd = [sys.executable] + [str(a) for a in args]
        step = Step(name, cmd)
        self.steps.append(step)
        limit = min(limit, self.left())
        if limit < 5:
            step.note = "skipped: the check's time budget is spent"
            return step
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        self.log.flush()
        t = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                               timeout=limit, stdin=subprocess.DEVNULL)
            step.rc = p.returncode
        except subprocess.TimeoutExpired:
            step.rc, step.note = 124, f"stopped at its limit of {limit:.0f} s"
        step.seconds = round(time.monotonic() - t, 1)
        self.log.write(f"[{name}: rc {step.rc}, {step.seconds} s]\n")
        self.log.flush()
        return step

    def record(self, name: str, figures: dict, note: str = "") -> Step:
        step = Step(name, [], rc=0, figures=figures, note=note)
        self.steps.append(step)
        return step


def environment(dry_run: bool) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "dry_run": dry_run,
        "bf16_native": bool(cuda and torch.cuda.is_bf16_supported(including_emulation=False)),
        "cpus": os.cpu_count(), "packages": {p: importlib.util.find_spec(p) is not None for p in PACKAGES},
    }


def ensure_pytest(check: Check) -> Optional[str]:
    """pytest importable, from the carried wheels if need be; None, or why not."""
    if importlib.util.find_spec("pytest") is not None:
        return None
    if not WHEELS.is_dir():
        return f"pytest is missing and no wheels were carried ({WHEELS.relative_to(ROOT)}/: see the docstring)"
    step = check.run("install-pytest", ["-m", "pip", "install", "-q", "--no-index", "--find-links", WHEELS,
                                        "--target", check.out / "pylib", "pytest"], 120)
    return None if step.rc == 0 else "pytest did not install from the carried wheels"


def last_epoch(run: Path) -> dict:
    """The last row of a run's metrics.csv and its precision, as figures."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    row = rows[-1]
    figures = {k: float(row[k]) for k in ("images_per_s", "data_wait", "seconds", "val_acc", "peak_gpu_mb")
               if row.get(k) not in (None, "")}
    figures["epochs"] = len(rows)
    figures["precision"] = json.loads((run / "config.json").read_text()).get("precision")
    return figures


SYNC_DEBUG = """
import sys
from pipeline.common.config import LoaderConfig, ModelConfig, OptimConfig, RunConfig
from pipeline.training.train import TrainPlan, train
plan = TrainPlan(ModelConfig(name="bart"), OptimConfig(epochs=1), LoaderConfig(cache="device"),
                 RunConfig(device=sys.argv[2], amp=True, out=sys.argv[3]))
s = train(sys.argv[1], plan, sync_debug="error")
print("sync_debug=error epoch:", s["history"][0]["images_per_s"], "img/s", s["amp"])
"""


def cli(*args) -> list:
    return [ROOT / "cli.py", *args]


def run_all(check: Check, dry_run: bool) -> None:
    z, out = check.sizes, check.out
    check.record("env", environment(dry_run))
    why = ensure_pytest(check)
    if why:
        check.record("cuda-tests", {}, note=why).rc = 1
    else:
        check.run("cuda-tests", ["-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                                 "tests/training/test_cuda_path.py"], 240)
    data, shards = out / "data", out / f"shards{z.size}"
    check.run("data", cli("synth", "--out", data, "--scale", z.scale, "--seed", "0"), 120)
    check.run("preprocess", cli("preprocess", "--size", z.size, "--data-dir", data, "--out", shards), 120)
    check.run("sync-debug", ["-c", SYNC_DEBUG, shards, z.device, out / "runs" / "sync-debug"], 90)
    for model in ("bart", "resnet"):
        for cache in ("device", "none"):
            run = out / "runs" / f"{model}-{cache}"
            step = check.run(f"train {model} --cache {cache}",
                             cli("train", "--shards", shards, "--model", model, "--amp", "--epochs", z.epochs,
                                 "--cache", cache, "--device", z.device, "--out", run, *z.train), 150)
            if step.rc == 0:
                step.figures = last_epoch(run)
    step = check.run("bench", cli("bench", "--data-dir", data, "--size", z.size, "--model", "bart", "--json",
                                  out / "bench.json", *z.bench), 180)
    if step.rc == 0:
        b = json.loads((out / "bench.json").read_text())
        step.figures = {"device": b.get("device"), "training": b.get("training"),
                        "preprocess_vs_limit": b["preprocess"]["project_vs_limit"],
                        "dataloader_img_s": b["loading"]["images_per_s"]["project_dataloader"]}
    onnx = out / "bart.onnx"
    check.run("export", cli("export", out / "runs" / "bart-device" / "best.pt", "--out", onnx), 120)
    images = sorted((data / "bart_simpson").glob("*.jpg"))[:3]
    check.run("predict --onnx", cli("predict", "--onnx", onnx, *images), 60)


def summary(steps: list[Step]) -> str:
    lines = [f"{'step':<28} {'rc':>4} {'s':>7}  figures"]
    for s in steps:
        figs = s.figures
        if s.name.startswith("train"):
            figs = {k: figs.get(k) for k in ("images_per_s", "data_wait", "peak_gpu_mb", "precision")}
        elif s.name == "env":
            figs = {k: figs.get(k) for k in ("device", "torch", "bf16_native")}
        elif s.name == "bench":
            figs = {k: figs.get(k) for k in ("device", "preprocess_vs_limit", "dataloader_img_s")}
        text = ", ".join(f"{k} {round(v, 3) if isinstance(v, float) else v}" for k, v in figs.items())
        lines.append(f"{s.name:<28} {'-' if s.rc is None else s.rc:>4} {s.seconds:7.1f}  {text}{s.note}")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="Folder for the JSON, the log and the runs (created).")
    ap.add_argument("--dry-run", action="store_true", help="Every step on the CPU at tiny sizes.")
    ap.add_argument("--scale", type=float, default=None, help="Look-alike scale [default: 0.5, dry run 0.01].")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; run it on a GPU machine, or --dry-run to rehearse on "
              "the CPU", file=sys.stderr)
        return 1
    sizes = DRY if args.dry_run else FULL
    if args.scale is not None:
        sizes = dataclasses.replace(sizes, scale=args.scale)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out, sizes)
    try:
        run_all(check, args.dry_run)
    finally:
        total = round(time.monotonic() - check.t0, 1)
        ok = all(s.rc == 0 for s in check.steps)
        report = {"ok": ok, "seconds": total, "sizes": sizes.__dict__,
                  "steps": [s.__dict__ | {"command": [str(c) for c in s.command]} for s in check.steps]}
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        check.log.close()
    print(summary(check.steps))
    print(f"{'passed' if ok else 'FAILED'} in {total:.0f} s; {args.out / 'gpu_check.json'}, "
          f"{args.out / 'gpu_check.log'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
