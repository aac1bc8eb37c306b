"""Export a trained classifier to ONNX, checked against ONNX Runtime, and run the exported file.

The exported graph takes what :meth:`Classifier.predict_proba` takes:
uint8 images, NHWC, of the trained size, any batch size; normalisation
(and the test-time flip, where the run validated with it) is inside the
graph, so a caller needs no mean or std. Outputs: ``probabilities``
(N, C) and ``logits`` (N, C). The weights are the moving average where the
checkpoint holds one (what ``evaluate`` scores). Metadata
(``onnx.ModelProto.metadata_props``): class names, image size, fit, minimum
side, mean/std, test-time flip, the checkpoint's SHA-256 and the project
version, so the file alone says how to decode an image for it.

Before writing, the export runs a batch of real images from the run's
shards through ONNX Runtime and PyTorch; outputs further apart than
:data:`PROB_TOL` / :data:`LOGIT_TOL` are an error, and the file is not
written. The write is atomic like every other file of this tool.

``onnx``, ``onnxscript`` and ``onnxruntime`` are an optional extra
(``pip install .[export]``); without them, :func:`export_onnx` says how to
get them.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..common.errors import UserError
from ..common.config import FIT_POLICIES, SIZE_MAX, SIZE_MIN
from ..common.files import atomic_write
from ..common.untrusted import MAX_CLASSES, printable, regular_file

logger = logging.getLogger(__name__)

# ONNX Runtime and PyTorch run the same fp32 graph with different kernels;
# measured differences are ~1e-7 (benchmarks/history/export.md "ONNX export"), so these
# bounds catch a wrong graph (a lost normalisation, a missing flip), never noise.
PROB_TOL = 1e-4
LOGIT_TOL = 1e-3
CHECK_IMAGES = 64
INSTALL = "pip install '.[export]' (onnx, onnxscript, onnxruntime); `make install` does"


class ExportError(UserError):
    """An export that cannot be made or does not match PyTorch."""


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"export needs the optional package {exc.name!r}: {INSTALL}") from None


class _Deployable(torch.nn.Module):
    """uint8 NHWC images -> (probabilities, logits): the network with its input pipeline."""

    def __init__(self, model: torch.nn.Module, scale: torch.Tensor, shift: torch.Tensor, tta: bool) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", scale.detach().cpu().reshape(1, 3, 1, 1).clone())
        self.register_buffer("shift", shift.detach().cpu().reshape(1, 3, 1, 1).clone())
        self.tta = tta

    def forward(self, images: torch.Tensor):
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        logits = self.model(x)
        if self.tta:
            logits = (logits + self.model(x.flip(3))) / 2
        return torch.softmax(logits, dim=1), logits


def _check_images(ckpt: dict, shards: Optional[Path], image_size: int, class_names: list[str]) -> np.ndarray:
    """Up to CHECK_IMAGES real images of the run's shard set (val first)."""
    from ..shardset.shard_format import ShardError
    from ..shardset.sets import open_set

    from ..storage.store import StoreError, is_url

    given = shards or ckpt.get("shards") or ""
    root = given if is_url(str(given)) else Path(given)
    try:
        sset = open_set(root, checksums=False)
    except (ShardError, StoreError) as exc:
        raise ExportError(f"{exc}; the export is checked on the run's shard images: pass --shards with the "
                          f"folder the run was trained on") from None
    if sset.image_size != image_size or sset.class_names != class_names:
        raise ExportError(f"{root}: {sset.image_size} px / {len(sset.class_names)} classes, the model was trained "
                          f"on {image_size} px / {len(class_names)} classes; pass --shards with its own shard set")
    split = sset.split("val" if sset.counts["val"] else "train")
    parts, have = [], 0
    for shard in split.shards:          # the first images of the split, shard after shard: no full load
        part = np.array(shard.images_map()[: CHECK_IMAGES - have])
        parts.append(part)
        have += len(part)
        if have == CHECK_IMAGES:
            break
    return np.concatenate(parts)


def _to_onnx(model: torch.nn.Module, example: torch.Tensor, opset: int):
    """The dynamo exporter's ONNX program for ``model`` with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)   # the exporter logs every optional op library it does not find
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch's own pytree deprecations, not the user's
            return torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                     output_names=["probabilities", "logits"], dynamic_shapes=({0: batch},),
                                     opset_version=opset, verbose=False)
    finally:
        quiet.setLevel(level)


def _metadata(clf, ckpt: dict, checkpoint: Path) -> dict:
    """What the exported file says of itself: classes, input, decode, normalisation, provenance."""
    from .. import __version__
    from ..shardset.shard_format import file_sha256

    return {
        "class_names": json.dumps(clf.class_names),
        "image_size": str(clf.image_size),
        "fit": clf.fit,
        "min_side": str(clf.min_side),
        "input": "uint8 NHWC RGB (N, image_size, image_size, 3), decoded and resized as preprocess does",
        "outputs": "probabilities (N, C), logits (N, C)",
        "mean": json.dumps([float(v) for v in ckpt["mean"]]),
        "std": json.dumps([float(v) for v in ckpt["std"]]),
        "tta": str(clf.tta).lower(),
        "model": ckpt["config"]["model"]["name"],
        "averaged_weights": str(bool(ckpt.get("ema"))).lower(),
        "checkpoint_sha256": file_sha256(checkpoint),
        "project_version": __version__,
    }


def _check_runtime(data: bytes, model: torch.nn.Module, images: np.ndarray, checkpoint: Path, out: Path):
    """ONNX Runtime's outputs against PyTorch's on ``images``: (max |dp|, max |dlogit|), or ExportError."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    probs, logits = session.run(None, {"images": np.ascontiguousarray(images)})
    with torch.no_grad():
        ref_probs, ref_logits = (t.numpy() for t in model(torch.from_numpy(np.ascontiguousarray(images))))
    dp, dl = float(np.abs(probs - ref_probs).max()), float(np.abs(logits - ref_logits).max())
    if not (dp <= PROB_TOL and dl <= LOGIT_TOL):
        raise ExportError(f"{checkpoint}: ONNX Runtime differs from PyTorch on {len(images)} shard images "
                          f"(probabilities by {dp:.2e} > {PROB_TOL:g} or logits by {dl:.2e} > {LOGIT_TOL:g}); "
                          f"nothing written to {out}. Report this as a bug with the checkpoint")
    return dp, dl


def export_onnx(checkpoint: Path, out: Path, shards: Optional[Path] = None, opset: int = 18) -> dict:
    """Export a checkpoint's classifier to ONNX after checking it against ONNX Runtime.

    Args:
        checkpoint: a run's ``best.pt`` or ``last.pt``.
        out: the ``.onnx`` file to write (atomically).
        shards: the shard set to take the check images from (default: the run's).
        opset: ONNX opset version.

    Returns:
        What was written: path, bytes, metadata and the measured differences.

    Raises:
        ExportError: the optional packages are missing, the run's shards are
            gone, or ONNX Runtime disagrees with PyTorch.
        CheckpointError: a missing, foreign or truncated checkpoint.
    """
    _require()
    import onnx

    from ..training.checkpoint import load_checkpoint
    from .evaluate import Classifier

    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = load_checkpoint(checkpoint)
    clf = Classifier.from_checkpoint(checkpoint, device="cpu", checkpoint=ckpt)
    images = _check_images(ckpt, shards, clf.image_size, clf.class_names)
    model = _Deployable(clf.model.to(memory_format=torch.contiguous_format), clf.transform.scale,
                        clf.transform.shift, clf.tta).eval()
    proto = _to_onnx(model, torch.from_numpy(np.ascontiguousarray(images[:2])), opset).model_proto
    meta = _metadata(clf, ckpt, checkpoint)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "simpsons-shards"
    data = proto.SerializeToString()
    onnx.checker.check_model(proto)
    dp, dl = _check_runtime(data, model, images, checkpoint, out)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    logger.info("exported %s -> %s (%d bytes; max |dp| %.2e, |dlogit| %.2e)", checkpoint, out, len(data), dp, dl)
    return {"path": str(out), "bytes": len(data), "metadata": meta, "check_images": int(len(images)),
            "max_prob_diff": dp, "max_logit_diff": dl}


MODEL_BYTES = 2 << 30   # protobuf's own limit for one message
MAX_NAME = 1_000


# What the exporter never writes and a crafted graph could use to run without end (a Loop of 2**62
# turns) or reach code outside ONNX's standard operators (another domain: contrib or custom ops).
CONTROL_FLOW = frozenset({"Loop", "Scan", "If", "SequenceMap"})


def _checked_graph(path: Path, data: bytes) -> None:
    """ExportError unless the model is one plain graph of standard operators, as export writes:
    no control flow, no local functions, no operator from another domain."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:   # protobuf's DecodeError and friends
        raise ExportError(f"{path}: not an ONNX model ({type(exc).__name__})") from None
    for node in model.graph.node:
        odd = node.op_type in CONTROL_FLOW or node.domain not in ("", "ai.onnx") \
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if odd:
            raise ExportError(f"{path}: operator {printable(node.domain + '.' if node.domain else '')}"
                              f"{printable(node.op_type)} is not one export writes (control flow or another "
                              f"domain); not a model this tool exported")
    if len(model.functions):
        raise ExportError(f"{path}: holds local functions, which export never writes; not a model this tool "
                          f"exported")


def _checked_metadata(path: Path, meta: dict, session) -> tuple[list[str], int, str, int]:
    """(class names, image size, fit, minimum side) from an exported model's metadata, each checked
    for its type and range, and the class count against the model's output: a model from
    someone else decides nothing here that this tool would not have written.

    Raises:
        ExportError: one line naming the file and the field.
    """
    def bad(why: str) -> ExportError:
        return ExportError(f"{path}: {why}; not a model this tool exported (export a checkpoint with "
                           f"`python cli.py export RUN/best.pt`)")

    try:
        raw = meta["class_names"]
        if len(raw) > MAX_CLASSES * (MAX_NAME + 4):
            raise bad("class_names metadata too large")
        names = json.loads(raw)
        size, fit, min_side = int(meta["image_size"]), meta["fit"], int(meta.get("min_side", 16))
    except KeyError as exc:
        raise bad(f"metadata lacks {exc}") from None
    except (ValueError, RecursionError):
        raise bad("metadata is not what export writes") from None
    if not (isinstance(names, list) and 1 <= len(names) <= MAX_CLASSES
            and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names)):
        raise bad("class_names is not a list of names")
    if not (SIZE_MIN <= size <= SIZE_MAX and fit in FIT_POLICIES and 1 <= min_side <= SIZE_MAX):
        raise bad(f"image_size {size}, fit '{printable(fit)}' or min_side {min_side} out of range")
    outputs = {o.name: o.shape for o in session.get_outputs()}
    width = (outputs.get("probabilities") or [None, None])[-1]
    if "probabilities" not in outputs or (isinstance(width, int) and width != len(names)):
        raise bad(f"{len(names)} class names for an output of {width}")
    return names, size, fit, min_side


@dataclass
class OnnxClassifier:
    """An exported file run by ONNX Runtime, with the decode its metadata names.

    Duck-types :class:`pipeline.inference.evaluate.Classifier` for ``predict_paths``:
    ``class_names``, ``load_image``, ``predict_proba``, ``predict``.
    """

    session: object
    class_names: list[str]
    image_size: int
    fit: str
    min_side: int
    metadata: dict
    path: str = ""

    @classmethod
    def load(cls, path: Path) -> "OnnxClassifier":
        """Open an exported ``.onnx`` file.

        Raises:
            ExportError: missing, not an ONNX model, or not exported by this tool.
        """
        _require()
        import onnxruntime as ort

        path = Path(path)
        st = regular_file(path, "a .onnx file written by `python cli.py export`", ExportError)   # not a FIFO or device
        if st.st_size > MODEL_BYTES:
            raise ExportError(f"{path}: {st.st_size:,} bytes, more than the {MODEL_BYTES:,} an exported model "
                              f"of this tool can be; export a checkpoint with `python cli.py export RUN/best.pt`")
        data = path.read_bytes()
        _checked_graph(path, data)
        try:
            # From its bytes, not its path: a model naming external data files (``../../etc/shadow``)
            # then has nowhere to read them from, and fails to load instead.
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            first = printable(str(exc).splitlines()[0][:160]) if str(exc) else type(exc).__name__
            raise ExportError(f"{path}: not an ONNX model ONNX Runtime can load ({first})") from None
        meta = dict(session.get_modelmeta().custom_metadata_map)
        names, size, fit, min_side = _checked_metadata(path, meta, session)
        return cls(session, names, size, fit, min_side, meta, str(path))

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, C) for uint8 (N, H, W, 3) images."""
        try:
            out = [self.session.run(["probabilities"], {"images": np.ascontiguousarray(images[s: s + batch_size])})[0]
                   for s in range(0, len(images), batch_size)]
        except Exception as exc:   # onnxruntime's own types: a graph that cannot run on these inputs
            first = printable(str(exc).splitlines()[0][:160]) if str(exc) else type(exc).__name__
            raise ExportError(f"{self.path}: ONNX Runtime cannot run this model ({first}); export a checkpoint "
                              f"with `python cli.py export RUN/best.pt`") from None
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), dtype=np.float32)

    def predict(self, images: np.ndarray) -> list[str]:
        """Class names for uint8 (N, H, W, 3) images."""
        return [self.class_names[i] for i in self.predict_proba(images).argmax(1)]

    def load_image(self, path: Path) -> np.ndarray:
        """Decode one file as preprocess did for the exported model (size, fit, minimum side)."""
        from ..imaging.decode import decode_file

        return decode_file(path, self.image_size, self.fit, self.min_side)
