"""The training loop: one model, one split of shards, AMP, checkpoints.

A run directory ``runs/NAME/`` gets ``config.json``, ``metrics.csv``,
``last.pt`` every epoch, ``best.pt`` by validation macro-F1 and
``curves.png``. Checkpoints hold only tensors and plain Python values, so
they load with ``torch.load(weights_only=True)``.

Reproducibility: ``seed`` reaches the model init (``torch.manual_seed``
before construction), the epoch order (the sampler's (seed, epoch)), the
DataLoader's generator and workers, and the augmentation generator. Every
RNG state is checkpointed at each epoch's end, so on CPU a run resumed after
epoch k gives bit-identical metrics to one that never stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from tqdm import tqdm

from model import NOTEBOOK_RECIPES, count_parameters, create_model
from . import distributed as dd
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import LoaderConfig, ModelConfig, OptimConfig, RunConfig, to_dict
from .env import cpu_has_fast_bf16
from .loader import DeviceTransform, create_loader
from .shard_format import open_split, read_manifest

logger = logging.getLogger(__name__)


class TrainingError(Exception):
    """A run that cannot start or must stop (mismatch, divergence)."""


@dataclass(frozen=True)
class TrainPlan:
    """Everything one run is made of, saved into every checkpoint."""

    model: ModelConfig
    optim: OptimConfig
    loader: LoaderConfig
    run: RunConfig

    def to_dict(self) -> dict:
        return {k: to_dict(getattr(self, k)) for k in ("model", "optim", "loader", "run")}


def recipe(name: str, model: str) -> tuple[OptimConfig, dict]:
    """(optimiser config, loader overrides) of a named recipe.

    ``notebook`` is the chosen model's notebook exactly: Adam at its lr,
    batch 32, its epoch count, constant lr, no smoothing, no augmentation.
    ``default`` is the best measured here (BENCHMARKS.md): AdamW with a
    one-cycle schedule, label smoothing .1, batch 128, flip + crop augmentation.
    """
    if name == "notebook":
        nb = NOTEBOOK_RECIPES[model]
        return (OptimConfig(optimizer="adam", lr=nb["lr"], weight_decay=0.0, schedule="constant",
                            label_smoothing=0.0, epochs=nb["epochs"]),
                {"batch_size": nb["batch_size"], "augment": False, "seed": nb["seed"]})
    if name == "default":
        return OptimConfig(), {"batch_size": 128, "augment": True}
    raise TrainingError(f"unknown recipe {name!r}; choose default or notebook")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def amp_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """The autocast dtype, or None for fp32.

    CUDA: bf16 where supported (no scaler needed), else fp16 + GradScaler.
    CPU: bf16 when the CPU runs it natively (measured 2.2x fp32 for BART at
    64 px on an AVX512-BF16 EPYC), else a warning and fp32.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cpu_has_fast_bf16():
        return torch.bfloat16
    logger.warning("--amp: this CPU has no native bf16, so autocast would be slower; training in fp32")
    return None


class Precision:
    """The AMP policy, written once for training and the bench.

    One autocast context (``dtype`` from :func:`amp_dtype`; disabled for
    fp32) and a ``GradScaler`` enabled only for fp16.
    """

    def __init__(self, device: torch.device, amp: bool) -> None:
        self.device_type = device.type
        self.dtype = amp_dtype(device, amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    @property
    def name(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.dtype else "fp32"

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on (x, y): (loss, logits)."""
        with self.autocast():
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return loss, logits


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro-F1 of predicted labels (both 0.0 for no samples)."""
    if not len(y_true):
        return 0.0, 0.0
    return float((y_pred == y_true).mean()), float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def evaluate_batches(model: nn.Module, loader, transform: DeviceTransform, autocast,
                     label_smoothing: float = 0.0, ctx: Optional[dd.DistContext] = None) -> dict:
    """Loss, accuracy and macro-F1 of ``model`` over a loader (no grad).

    Under torchrun each rank scores its part of the split and the
    predictions are gathered, so every rank reports the whole split's metrics.
    """
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    preds, trues = [], []
    with torch.no_grad():
        for xb, yb in loader:
            with autocast():
                logits = model(transform(xb))
            loss_sum += nn.functional.cross_entropy(logits.float(), yb, reduction="sum",
                                                    label_smoothing=label_smoothing).double().cpu()
            preds.append(logits.argmax(1).cpu())
            trues.append(yb.cpu())
    y_pred = torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)
    y_true = torch.cat(trues).numpy() if trues else np.zeros(0, dtype=np.int64)
    if ctx is not None and ctx.distributed:
        parts = dd.gather_objects(ctx, (y_true.tolist(), y_pred.tolist(), float(loss_sum)))
        y_true = np.array([v for p in parts for v in p[0]], dtype=np.int64)
        y_pred = np.array([v for p in parts for v in p[1]], dtype=np.int64)
        loss_sum = torch.tensor(sum(p[2] for p in parts), dtype=torch.float64)
    acc, f1 = accuracy_f1(y_true, y_pred)
    return {"loss": float(loss_sum) / max(1, len(y_true)), "acc": acc, "f1": f1, "y_true": y_true, "y_pred": y_pred}


def train(shards: Path, plan: TrainPlan, resume: Optional[Path] = None, progress: bool = False,
          say: Callable[[str], None] = logger.info, stop_after: Optional[int] = None) -> dict:
    """Train ``plan.model`` on the shard set in ``shards``.

    Args:
        shards: a complete shard set (preprocess's output folder).
        plan: model, optimiser, loader and run configs.
        resume: a ``last.pt`` to continue from exactly.
        progress: tqdm bar per epoch on stderr.
        say: where one-line status messages go (the CLI passes ``click.echo``).
        stop_after: end after this many epochs of this call (tests of resume).

    Returns:
        The run summary: best epoch and metrics, history, output folder.

    Raises:
        TrainingError: a shard/model mismatch, a bad checkpoint, or a NaN/inf loss.
        ShardError: missing or incomplete shards.
    """
    manifest = read_manifest(shards)
    train_split, val_split = open_split(shards, "train"), open_split(shards, "val")
    size, classes = train_split.image_size, train_split.class_names
    mcfg = replace(plan.model, num_classes=len(classes), image_size=size)
    if size % 16:
        raise TrainingError(f"the shards in {shards} are {size} px; {mcfg.name} needs a multiple of 16: "
                            f"run `python cli.py preprocess --size 128 --force`")
    plan = replace(plan, model=mcfg)
    ctx = dd.setup(resolve_device(plan.run.device))  # checks the device before joining any process group
    try:
        return _run(shards, plan, manifest, train_split, val_split, ctx, resume, progress, say, stop_after)
    finally:
        dd.cleanup(ctx)


def _run(shards, plan: TrainPlan, manifest, train_split, val_split, ctx: dd.DistContext, resume, progress,
         say, stop_after) -> dict:
    mcfg, device = plan.model, ctx.device
    size, classes = mcfg.image_size, train_split.class_names
    if not ctx.is_main:  # one voice, one set of files: rank 0's
        say, progress = (lambda _msg: None), False
    out = Path(plan.run.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt["class_names"] != classes or ckpt["config"]["model"]["image_size"] != size:
            raise TrainingError(f"{resume} was trained on {ckpt['config']['model']['image_size']} px with "
                                f"{len(ckpt['class_names'])} classes; the shards in {shards} differ")
        if len(ckpt["rng"]) != ctx.world_size:
            raise TrainingError(f"{resume} was written by {len(ckpt['rng'])} processes; resume with the same "
                                f"world size (got {ctx.world_size})")
    torch.manual_seed(plan.run.seed)  # model init: identical on every rank
    model = create_model(mcfg.name, num_classes=mcfg.num_classes, image_size=mcfg.image_size)
    torch.manual_seed(plan.run.seed + 1_000_003 * ctx.rank)  # dropout: a stream per rank
    say(f"model {mcfg.name}: {count_parameters(model):,} parameters, {size}x{size} px, {len(classes)} classes, "
        f"{len(train_split)} train / {len(val_split)} val images"
        + (f", {ctx.world_size} processes x batch {plan.loader.batch_size}" if ctx.distributed else ""))
    if plan.run.sync_bn:
        if device.type != "cuda":
            raise TrainingError("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel); drop it on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    channels_last = True  # measured faster on CPU (1.3x) and CUDA
    model = model.to(device, memory_format=torch.channels_last)
    prec = Precision(device, plan.run.amp)
    o = plan.optim
    if o.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=o.lr)
    elif o.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    else:
        raise TrainingError(f"unknown optimizer {o.optimizer!r}")
    rk = {"rank": ctx.rank, "world_size": ctx.world_size}
    train_loader = create_loader(train_split, plan.loader, device=device, train=True, **rk)
    val_loader = create_loader(val_split, replace(plan.loader, balance=False), device=device, train=False, **rk)
    steps = len(train_loader)
    if o.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=o.epochs * steps,
                                                        pct_start=0.25, div_factor=20.0, final_div_factor=200.0)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    transform = DeviceTransform(train_split.mean, train_split.std, device, channels_last,
                                seed=plan.loader.seed + 1_000_003 * ctx.rank)
    model_fwd = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model_fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model_fwd = torch.compile(model_fwd) if plan.run.compile else model_fwd
    history: list[dict] = []
    start, best_f1 = 0, -1.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        prec.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"][ctx.rank], transform)
        start, best_f1, history = ckpt["epoch"] + 1, ckpt["best_f1"], list(ckpt["history"])
        say(f"resumed from {resume} after epoch {start}")
    if ctx.is_main:
        (out / "config.json").write_text(json.dumps({**plan.to_dict(), "shards": str(shards),
                                                     "world_size": ctx.world_size,
                                                     "shards_fingerprint": manifest.get("fingerprint")},
                                                    indent=2) + "\n")

    def payload(epoch: int, gather: bool = True) -> dict:
        # every rank's RNG state, for an exact resume (a collective: all ranks call it)
        rng = dd.gather_objects(ctx, rng_state(transform)) if gather else [rng_state(transform)]
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": prec.scaler.state_dict(), "epoch": epoch,
                "best_f1": best_f1, "history": history, "rng": rng, "world_size": ctx.world_size,
                "class_names": classes, "mean": train_split.mean.tolist(), "std": train_split.std.tolist(),
                "config": plan.to_dict(), "preprocess": manifest["options"],
                "format": "simpsons-shards-checkpoint-1"}

    epoch = start
    last_epoch = o.epochs if stop_after is None else min(o.epochs, start + stop_after)
    try:
        for epoch in range(start, last_epoch):
            stats = _train_epoch(model, model_fwd, train_loader, transform, optimizer, scheduler, prec,
                                 o.label_smoothing, plan.loader.augment, epoch, progress, ctx)
            dd.broadcast_buffers(ctx, model)
            val_loader.set_epoch(epoch)  # same order every epoch; keeps its stream running
            val = evaluate_batches(model, val_loader, transform, prec.autocast, ctx=ctx)
            row = {"epoch": epoch + 1, **stats, "val_loss": val["loss"], "val_acc": val["acc"],
                   "val_f1": val["f1"], "lr": optimizer.param_groups[0]["lr"]}
            history.append(row)
            improved = val["f1"] > best_f1
            best_f1 = max(best_f1, val["f1"])
            data = payload(epoch)
            if ctx.is_main:
                save_checkpoint(out / "last.pt", data)
                if improved:
                    save_checkpoint(out / "best.pt", data)
                _write_metrics(out, history)
            say(f"epoch {epoch + 1}/{o.epochs}: train loss {stats['train_loss']:.4f} acc {stats['train_acc']:.3f} | "
                f"val loss {val['loss']:.4f} acc {val['acc']:.3f} macro-F1 {val['f1']:.3f} | "
                f"{stats['seconds']:.1f} s, {stats['images_per_s']:.0f} img/s, data wait "
                f"{100 * stats['data_wait']:.1f}%{' *best*' if improved else ''}")
    except KeyboardInterrupt:
        if ctx.is_main:  # no collective here: the other ranks are being interrupted too
            save_checkpoint(out / "interrupted.pt", payload(epoch - 1, gather=False))
        say(f"interrupted: weights saved to {out / 'interrupted.pt'}; resume from {out / 'last.pt'}")
        raise
    finally:
        if history and ctx.is_main:
            from .plots import plot_curves
            plot_curves(history, out / "curves.png")
    best = max(history, key=lambda h: h["val_f1"]) if history else {}
    return {"out": str(out), "history": history, "best": best, "device": str(device), "rank": ctx.rank,
            "world_size": ctx.world_size, "amp": prec.name,
            "config": plan.to_dict(), "model": model}


def _train_epoch(model, model_fwd, loader, transform, optimizer, scheduler, prec: Precision,
                 label_smoothing: float, augment: bool, epoch: int, progress: bool,
                 ctx: Optional[dd.DistContext] = None) -> dict:
    model.train()
    loader.set_epoch(epoch)
    dev = next(model.parameters()).device
    # Running sums stay on the device: no host sync per step.
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    seen, wait = 0, 0.0
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    it = iter(loader)
    bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=not progress)
    step = 0
    while True:
        tw = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - tw
        x = transform(xb, augment=augment)
        loss, logits = prec.step(model_fwd, optimizer, x, yb, label_smoothing)
        scheduler.step()
        loss_sum += loss.detach().double() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(yb)
        step += 1
        # One sync per 20 steps; under torchrun the check waits for the epoch's
        # all-reduce, so every rank stops together instead of one hanging.
        if step % 20 == 0 and (ctx is None or not ctx.distributed) and not math.isfinite(float(loss_sum)):
            break
        bar.update()
    bar.close()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if ctx is not None and ctx.distributed:  # the epoch's sums over every rank
        seen_t = torch.tensor(float(seen), dtype=torch.float64, device=dev)
        sums = dd.all_reduce_sum(ctx, torch.stack([loss_sum, correct.double(), seen_t]))
        loss_sum, correct, seen = sums[0], sums[1], int(sums[2])
    total = float(loss_sum)
    if not math.isfinite(total):
        raise TrainingError(f"loss became {total} in epoch {epoch + 1}; the last good checkpoint is kept "
                            f"(last.pt of epoch {epoch}); try a lower --lr or --no-amp")
    return {"train_loss": total / max(1, seen), "train_acc": float(correct) / max(1, seen), "seconds": seconds,
            "images_per_s": seen / seconds, "data_wait": wait / seconds}


def _write_metrics(out: Path, history: list[dict]) -> None:
    with open(out / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)
