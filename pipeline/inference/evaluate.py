"""Evaluate a checkpoint and predict images with it.

:class:`Classifier` is the notebooks' "model + label encoder": it keeps the
class names, the training normalisation and the preprocess options, and
has ``predict`` / ``predict_proba``. Raw images go through the exact decode
of preprocess (``pipeline.imaging.decode``), so inference sees what training saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix
from tqdm import tqdm

from model import create_model
from ..training.checkpoint import CheckpointError, load_checkpoint, load_weights
from ..common.config import check_image_size
from ..imaging.decode import DecodeError, decode_file
from ..building.discover import IMAGE_EXTENSIONS, DatasetError, discover, printable
from ..common.files import write_text
from ..reading.transform import DeviceTransform
from ..common.config import StorageConfig
from ..shardset.sets import open_set
from ..training.metrics import accuracy_f1, predict_logits
from ..training.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class Classifier:
    """A trained network with its label encoder and preprocessing."""

    model: torch.nn.Module
    class_names: list[str]
    transform: DeviceTransform
    image_size: int
    fit: str
    device: torch.device
    min_side: int = 16
    tta: bool = False  # test-time flip, as the run that made it validated

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "auto", checkpoint: Optional[dict] = None) -> "Classifier":
        """Load with ``weights_only=True``, check it, and rebuild the network from its saved config.

        Args:
            checkpoint: the already loaded and checked checkpoint of ``path``, so a caller that needs
                it too reads the file once.

        Raises:
            CheckpointError: missing, foreign, truncated, or weights that do not fit.
        """
        path = Path(path)
        ckpt = checkpoint if checkpoint is not None else load_checkpoint(path)
        dev = resolve_device(device)
        mcfg = ckpt["config"]["model"]
        try:
            check_image_size(mcfg["image_size"])
            # a checkpoint saved before widths were a field holds the network's own (model.resnet.WIDTHS)
            model = create_model(mcfg["name"], num_classes=mcfg["num_classes"], image_size=mcfg["image_size"],
                                 widths=mcfg.get("widths"))
        except ValueError as exc:
            raise CheckpointError(f"not a checkpoint of this tool: {path} ({exc})") from None
        load_weights(model, ckpt, path, averaged=True)
        model.to(dev, memory_format=torch.channels_last).eval()
        pre = ckpt.get("preprocess") or {}
        # the decode preprocess used, so inference sees what training saw (and skips what it skipped)
        return cls(model, list(ckpt["class_names"]), DeviceTransform(ckpt["mean"], ckpt["std"], dev, True),
                   int(mcfg["image_size"]), pre.get("fit", "squash"), dev, int(pre.get("min_side", 16)),
                   bool(ckpt["config"].get("run", {}).get("tta", False)))

    def predict_proba(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, C) for uint8 (N, H, W, 3) images."""
        out = []
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(images[s: s + batch_size])).to(self.device)
                logits = predict_logits(self.model, self.transform(xb), self.tta)
                out.append(torch.softmax(logits.float(), 1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), dtype=np.float32)

    def predict(self, images: np.ndarray) -> list[str]:
        """Class names for uint8 (N, H, W, 3) images."""
        return [self.class_names[i] for i in self.predict_proba(images).argmax(1)]

    def load_image(self, path: Path) -> np.ndarray:
        """Decode one file exactly as preprocess did (same size, fit, minimum side, bomb guard).

        Raises:
            DecodeError: the reason preprocess would have skipped it for.
        """
        return decode_file(path, self.image_size, self.fit, self.min_side)


def _report(clf: Classifier, y_true: np.ndarray, probs: np.ndarray, out_dir: Path, extra: dict) -> dict:
    from ..training.plots import plot_confusion, worst_confusions

    if not len(y_true):
        raise DatasetError(f"{extra['source']}: no images to evaluate")
    y_pred = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    present = sorted(set(y_true.tolist()))
    absent = sorted(set(y_pred.tolist()) - set(present))  # classes the model predicted that the data lacks
    labels = present + absent
    names = [clf.class_names[i] for i in labels]
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(cm, names, out_dir / "confusion_matrix.png")
    per_class = classification_report(y_true, y_pred, labels=present, target_names=names[: len(present)],
                                      output_dict=True, zero_division=0)
    accuracy, macro_f1 = accuracy_f1(y_true, y_pred)  # over the classes present in the data
    table = {n: per_class[n] for n in names[: len(present)]}
    rows = ["class,precision,recall,f1,support"] + [
        f"{n},{r['precision']:.4f},{r['recall']:.4f},{r['f1-score']:.4f},{int(r['support'])}" for n, r in table.items()]
    write_text(out_dir / "per_class.csv", "\n".join(rows) + "\n")
    return {"images": int(len(y_true)), "accuracy": accuracy, "macro_f1": macro_f1, "per_class": table,
            "absent_predictions": {clf.class_names[c]: int((y_pred == c).sum()) for c in absent},
            "worst_confusions": worst_confusions(cm, names),
            "confusion_matrix_png": str(out_dir / "confusion_matrix.png"),
            "per_class_csv": str(out_dir / "per_class.csv"), **extra}


def evaluate_shards(clf: Classifier, shards, split: str, out_dir: Path, storage: Optional[StorageConfig] = None) -> dict:
    """Metrics of ``clf`` on one split of a shard set (checked first).

    Raises:
        ShardError: a missing, stale or corrupt set.
        DatasetError: the split is empty, or its classes/size differ from the model's.
    """
    sset = open_set(shards, storage=storage)
    if sset.class_names != clf.class_names or sset.image_size != clf.image_size:
        raise DatasetError(f"{shards}: {sset.image_size} px / {len(sset.class_names)} classes, the model was "
                           f"trained on {clf.image_size} px / {len(clf.class_names)} classes; pass the --shards "
                           f"it was trained on")
    if not sset.counts[split]:
        raise DatasetError(f"{shards}: the {split} split is empty (preprocessed with --val-frac 0?); "
                           f"evaluate --split train, or preprocess with --val-frac 0.15 --force")
    ss = sset.split(split)
    return _report(clf, ss.labels, clf.predict_proba(ss.load_all()), out_dir, {"source": f"{shards} ({split})"})


def _flat_class(name: str) -> str:
    """``homer_simpson_12.jpg`` -> ``homer_simpson`` (the public test set's layout)."""
    stem = Path(name).stem
    head, _, tail = stem.rpartition("_")
    return head if head and tail.isdigit() else stem


def dir_layout(data_dir: Path) -> tuple[str, list[tuple[Path, str]], list[str]]:
    """("folders" | "flat", [(image path, class name)], stray files) of an image folder.

    Class folders win: a folder with class sub-folders is read as such, and
    image files lying at its top level are reported as stray, never scored.
    Only a folder with no class sub-folder is the public test set's flat
    layout (``homer_simpson_12.jpg``).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: no such folder; pass --data-dir with class folders or <class>_<n>.jpg files")
    try:
        disc = discover(data_dir)
    except DatasetError:
        disc = None
    if disc is not None:
        stray = [rel for rel, why in disc.skipped if why == "file outside any class folder"]
        return "folders", [(data_dir / rel, disc.classes[label]) for rel, label in disc.files], stray
    flat = [p for p in sorted(data_dir.iterdir(), key=lambda p: p.name)
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not p.is_dir()]
    return "flat", [(p, _flat_class(printable(p.name))) for p in flat], []


def evaluate_dir(clf: Classifier, data_dir: Path, out_dir: Path, progress: bool = False) -> dict:
    """Metrics on raw images: class folders, or a flat folder named ``<class>_<n>.jpg``.

    Raises:
        DatasetError: no such folder, or no image of a class the model knows decoded.
    """
    data_dir = Path(data_dir)
    layout, items, stray = dir_layout(data_dir)
    known = {n: i for i, n in enumerate(clf.class_names)}
    unknown = sorted({c for _, c in items if c not in known})
    images, labels, failed = [], [], []
    for path, cname in tqdm(items, desc="decode", unit="img", disable=not progress):
        if cname not in known:
            continue
        try:
            images.append(clf.load_image(path))
            labels.append(known[cname])
        except DecodeError as exc:
            failed.append({"path": printable(str(path)), "reason": str(exc)})
    if not images:
        raise DatasetError(f"{data_dir}: no image of a class the model knows decoded ({len(items)} found, "
                           f"{len(failed)} unreadable)")
    return _report(clf, np.array(labels), clf.predict_proba(np.stack(images)), out_dir,
                   {"source": str(data_dir), "layout": layout, "stray_files": stray, "unknown_classes": unknown,
                    "left_out": sum(1 for _, c in items if c not in known), "failed": failed})


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders as their image files, recursively, sorted.

    A broken symbolic link with an image name is kept, so its line says so
    instead of it vanishing from the output.
    """
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS
                          and not q.name.startswith(".") and (q.is_file() or q.is_symlink()))
        else:
            out.append(p)
    return out


def predict_paths(clf: Classifier, paths: list[Path], top_k: int = 3) -> list[dict]:
    """Top-k (class, probability) per image; an unreadable file gets an ``error`` instead."""
    results, images, slots = [], [], []
    for p in expand_paths(paths):
        try:
            images.append(clf.load_image(p))
            slots.append(len(results))
            results.append({"path": str(p)})
        except DecodeError as exc:
            results.append({"path": printable(str(p)), "error": str(exc)})
    if images:
        probs = clf.predict_proba(np.stack(images))
        k = min(top_k, probs.shape[1])
        for slot, pr in zip(slots, probs):
            top = np.argsort(-pr)[:k]
            results[slot]["top"] = [(clf.class_names[i], float(pr[i])) for i in top]
    return results
