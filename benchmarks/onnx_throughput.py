"""ONNX Runtime against PyTorch inference on this CPU, side by side in one run.

    python benchmarks/onnx_throughput.py [--sizes 64 128] [--batch 64] [--rounds 5]

For each architecture and size: the deployable graph (uint8 NHWC in,
normalisation inside, probabilities out; ``pipeline.inference.export``) exported from
a randomly initialised network (speed does not depend on the weights), then
timed in interleaved rounds of at least 1 s each: PyTorch eval (no grad,
channels_last as ``Classifier`` runs it) and ONNX Runtime (CPU provider,
default threads). Prints median images/s and the median of within-round
ratios; the two outputs are compared too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import create_model  # noqa: E402
from pipeline.inference.export import _Deployable  # noqa: E402


def rate(fn, images: np.ndarray, min_s: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn(images)
        n += len(images)
    return n / (time.perf_counter() - t0)


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--models", nargs="+", default=["cnn4conv", "bart", "resnet"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}, "
          f"batch {args.batch}")
    for size in args.sizes:
        for name in args.models:
            net = create_model(name, num_classes=42, image_size=size).eval()
            graph = _Deployable(net, torch.full((3,), 1 / 255 / 0.25), torch.full((3,), 0.5 / 0.25), False).eval()
            images = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = Path(tmp) / "m.onnx"
                torch.onnx.export(graph, (torch.from_numpy(images[:2]),), dynamo=True, input_names=["images"],
                                  output_names=["probabilities", "logits"], verbose=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},)).save(path)
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            cl = _Deployable(create_model(name, num_classes=42, image_size=size), graph.scale.flatten() * 1,
                             graph.shift.flatten() * 1, False)
            cl.load_state_dict(graph.state_dict())
            cl = cl.to(memory_format=torch.channels_last).eval()

            def run_torch(x):
                with torch.no_grad():
                    return cl(torch.from_numpy(x))[0]

            def run_ort(x):
                return sess.run(["probabilities"], {"images": x})[0]

            diff = float(np.abs(run_ort(images) - run_torch(images).numpy()).max())
            pt, ox = [], []
            for r in range(args.rounds):
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    (pt if which == 0 else ox).append(rate(run_torch if which == 0 else run_ort, images,
                                                           args.min_seconds))
            ratio = statistics.median(o / p for o, p in zip(ox, pt))
            print(f"{size:>4} px {name:9s} PyTorch {statistics.median(pt):8.0f} img/s   ONNX Runtime "
                  f"{statistics.median(ox):8.0f} img/s   ORT/PyTorch {ratio:5.2f}x   max |dp| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
