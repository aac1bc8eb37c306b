"""The Python blocks of the README ("A first look from Python") and of docs/python.md ("Use from
Python", "Deploy") run as written, in order, where the demo has just run, against the package
installed with pip (not the source tree), from another directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]


def section(page: str, title: str) -> str:
    text = (ROOT / page).read_text(encoding="utf-8")
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def python_blocks(page: str, title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(page, title), flags=re.S)


def make_demo(size: int, model: str) -> None:
    """`make demo` in the current folder, at a small scale: look-alike set, shards, a 1-epoch run."""
    for args in (["synth", "--out", "data/lookalike", "--scale", "0.01"],
                 ["preprocess", "--data-dir", "data/lookalike", "--size", str(size)],
                 ["train", "--model", model, "--epochs", "1", "--device", "cpu", "--out", "runs/demo"]):
        r = CliRunner().invoke(cli.main, args)
        assert r.exit_code == 0, r.output


def test_the_use_from_python_blocks_run_as_written(tmp_path):
    first = python_blocks("README.md", "A first look from Python")
    blocks = python_blocks("docs/python.md", "Use from Python")
    assert len(first) == 1 and len(blocks) == 6
    os.chdir(tmp_path)  # the demo's folder layout (`make demo`), at a small scale
    try:
        make_demo(64, "cnn4conv")
    finally:
        os.chdir(ROOT)
    # installed as a user would (`pip install .`, here into a folder), and run from another directory
    target = tmp_path / "installed"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "2"}
    r = subprocess.run([str(target / "bin" / "simpsons-shards"), "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "preprocess" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", "import pipeline, model; print(pipeline.__file__)"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(str(target)), r.stdout + r.stderr
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(first + blocks), encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "torch.Size([128, 3, 64, 64]) torch.float32" in out    # the README's first look: a normalised batch
    assert "torch.Size([3, 64, 64]) torch.uint8" in out and "epoch 1: loss" in out
    assert "{'train': 34, 'val': 7} 2 shards" in out  # 41 samples: 40 arrays + one file
    assert (tmp_path / "my-shards" / "manifest.json").is_file() and (tmp_path / "runs/from-python/last.pt").is_file()


def test_the_deploy_blocks_run_as_written(tmp_path):
    """docs/python.md "Deploy": its commands (through the CLI) and its Python (ONNX Runtime alone) on a demo run."""
    import shlex

    body = section("docs/python.md", "Deploy")
    commands = re.findall(r"```bash\n(.*?)```", body, flags=re.S)[0]
    (python,) = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    os.chdir(tmp_path)
    try:
        make_demo(32, "resnet")
        outputs = []
        for line in commands.strip().splitlines():
            argv = shlex.split(line.split("#")[0])
            assert argv[:2] == ["python", "cli.py"]
            r = CliRunner().invoke(cli.main, argv[2:])
            assert r.exit_code == 0, r.output
            outputs.append(r.output)
    finally:
        os.chdir(ROOT)
    assert (tmp_path / "model.onnx").is_file() and "ONNX Runtime = PyTorch within" in outputs[0]
    predicted = outputs[1].split(": ", 1)[1].split(" ")[0]
    script = tmp_path / "deploy.py"
    script.write_text(python, encoding="utf-8")
    r = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    name, prob = r.stdout.split()
    classes = json.loads((tmp_path / "shards" / "manifest.json").read_text())["class_names"]
    # the same class as `predict --onnx` unless plain PIL decoding tipped a near tie (1-epoch model)
    assert name in classes and predicted in classes and 0 < float(prob) <= 1
