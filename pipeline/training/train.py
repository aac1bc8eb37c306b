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

import contextlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from model import count_parameters, create_model
from ..common.config import StorageConfig, TrainPlan, check_image_size
from ..common.files import FolderLock, write_text
from ..reading.loader import create_loader
from ..reading.transform import DeviceTransform
from ..shardset.shard_format import ShardSet
from ..shardset.sets import open_set
from ..storage.store import StoreError
from . import distributed, steploop
from .checkpoint import load_checkpoint, restore_run, rng_state, save_checkpoint
from .checkpoint import TrainingError, check_out, check_resume, resume_plan  # noqa: F401  (public via train)
from .metrics import Validator
from .optim import WeightEma, lr_at, make_optimizer, res_at, set_lr
from .plots import write_records
from .runtime import DistContext, Precision, cleanup, configure_cuda, peak_memory_mb, resolve_device, setup
from .steploop import EpochSums, NanCheck, RunPosition, Stopped, StopRequest, TimeBudget

logger = logging.getLogger(__name__)


def train(shards, plan: TrainPlan, resume: Optional[Path] = None, progress: bool = False,
          say: Callable[[str], None] = logger.info, stop_after: Optional[int] = None,
          on_step: Optional[Callable[[int, int], None]] = None, sync_debug: Optional[str] = None,
          checkpoint: Optional[dict] = None, storage: Optional[StorageConfig] = None) -> dict:
    """Train ``plan.model`` on the shard set in ``shards``.

    Args:
        shards: a complete shard set (preprocess's output folder, or its URL in
            object storage, read through the node's cache ``storage``); checked first.
        plan: model, optimiser, loader and run configs. With ``resume``, use
            :func:`resume_plan` (its recipe must be the checkpoint's; a
            larger ``optim.epochs`` extends the run).
        resume: a ``last.pt`` or ``interrupted.pt`` to continue from exactly.
        progress: tqdm bar per epoch on stderr.
        say: where one-line status messages go (the CLI passes ``click.echo``).
        stop_after: end after this many epochs of this call (tests of resume).
        on_step: called as ``on_step(epoch, step)`` after every training step.
        sync_debug: on CUDA, ``torch.cuda.set_sync_debug_mode`` inside the step
            loop (``"error"``: a host-device sync there raises).
        checkpoint: ``resume`` already loaded with ``load_checkpoint(resume,
            for_resume=True)`` (as for :func:`resume_plan`), so it is read once.

    Returns:
        The run summary: best epoch and metrics, history, output folder,
        ``model`` (the trained weights) and ``averaged`` (their moving
        average, the model that was validated; None without ``optim.ema``).

    Raises:
        TrainingError: a shard/model mismatch, a bad resume, or a NaN/inf loss.
        ShardError: missing, incomplete or corrupt shards.
        CheckpointError: a ``resume`` file that is not a checkpoint of this tool.
        KeyboardInterrupt: after Ctrl-C, once ``interrupted.pt`` is written.
    """
    sset = open_set(shards, storage=storage)
    train_split, val_split = sset.split("train"), sset.split("val")
    size, classes = sset.image_size, sset.class_names
    if len(train_split) == 0:
        raise TrainingError(f"{shards}: the train split is empty; preprocess a folder with images")
    mcfg = replace(plan.model, num_classes=len(classes), image_size=size)
    check_image_size(size)
    plan = replace(plan, model=mcfg)
    ckpt = None
    if resume is not None:
        ckpt = checkpoint if checkpoint is not None else load_checkpoint(resume, for_resume=True)
    ctx = setup(resolve_device(plan.run.device))  # checks the device before joining any process group
    try:
        if ckpt is not None:
            check_resume(ckpt, plan, resume, classes, size, ctx.world_size)
        if ctx.is_main:
            check_out(Path(plan.run.out), resume, shards)
        trainer = Trainer(sset, train_split, val_split, plan, ctx, say if ctx.is_main else (lambda _m: None),
                          progress and ctx.is_main, sync_debug)
        with FolderLock(trainer.out, "train") if ctx.is_main else contextlib.nullcontext():
            try:
                if ckpt is not None:
                    trainer.restore(ckpt, resume)
                return trainer.run(stop_after, on_step)
            finally:
                trainer.close()   # inside the lock: the loader workers hold its file too
    finally:
        cleanup(ctx)


def build_model(plan: TrainPlan, ctx: DistContext) -> nn.Module:
    """The model, initialised from ``run.seed`` (identical on every rank), channels-last on the device.

    After it, torch's CPU RNG is reseeded per rank: dropout draws a stream of its own on each.
    """
    mcfg, device = plan.model, ctx.device
    torch.manual_seed(plan.run.seed)
    model = create_model(mcfg.name, num_classes=mcfg.num_classes, image_size=mcfg.image_size,
                         widths=mcfg.widths)
    torch.manual_seed(plan.run.seed + 1_000_003 * ctx.rank)
    if plan.run.sync_bn:
        if device.type != "cuda":
            raise TrainingError("--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel); drop it on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels-last: faster convolutions on CPU and CUDA (benchmarks/history/bench.md "CPU training:
    # dtype and memory format")
    return model.to(device, memory_format=torch.channels_last)


def build_loaders(sset: ShardSet, train_split, val_split, plan: TrainPlan, ctx: DistContext,
                  transform: DeviceTransform):
    """(train loader, val loader or None). The train loader owns the transform (and its RNG state).

    Both reuse their CPU buffers: the loop is done with each batch (transformed into a new
    tensor) before it asks for the next. ``--compile`` trains on whole batches only, so the
    graph is compiled for one shape.
    """
    rk = {"rank": ctx.rank, "world_size": ctx.world_size, "device": ctx.device}
    train = create_loader(train_split, replace(plan.loader, drop_last=plan.run.compile, reuse_buffers=True),
                          train=True, transform=transform, **rk)
    val = (create_loader(val_split, replace(plan.loader, balance=0.0, reuse_buffers=True), train=False, **rk)
           if len(val_split) else None)
    return train, val


def wrap_forward(model: nn.Module, plan: TrainPlan, ctx: DistContext) -> nn.Module:
    """What the step calls: the model, under DDP with torchrun, compiled with ``--compile``."""
    fwd = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return torch.compile(fwd) if plan.run.compile else fwd


class Trainer:
    """One run's state: model, optimiser, precision, loaders, position, history.

    Built by :func:`train`; :meth:`run` trains to ``plan.optim.epochs``,
    writing ``last.pt`` after every epoch (``best.pt`` on a better val
    macro-F1), ``metrics.csv`` and ``curves.png``, all atomically.
    """

    def __init__(self, sset: ShardSet, train_split, val_split, plan: TrainPlan, ctx: DistContext,
                 say: Callable[[str], None], progress: bool, sync_debug: Optional[str] = None) -> None:
        self.sset, self.plan, self.ctx, self.say, self.progress = sset, plan, ctx, say, progress
        self.sync_debug = sync_debug  # "error": any host-device sync in the step loop raises (CUDA)
        device = ctx.device
        self.out = Path(plan.run.out)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.model = build_model(plan, ctx)
        self.summary = (f"model {plan.model.name}: {count_parameters(self.model):,} parameters, "
                        f"{plan.model.image_size}x{plan.model.image_size} px, {len(sset.class_names)} classes, "
                        f"{len(train_split)} train / {len(val_split)} val images"
                        + (f", {ctx.world_size} processes x batch {plan.loader.batch_size}" if ctx.distributed
                           else ""))
        self.prec = Precision(device, plan.run.amp)
        if device.type == "cuda":
            configure_cuda(plan.run.exact)
        self.optimizer = make_optimizer(plan.optim, self.model.parameters(), device)
        self.ema = WeightEma(self.model, plan.optim.ema) if plan.optim.ema else None
        self.transform = DeviceTransform(sset.mean, sset.std, device, True,
                                         seed=plan.loader.seed + 1_000_003 * ctx.rank,
                                         augment="flip-crop" if plan.loader.augment else None)
        self.train_loader, self.val_loader = build_loaders(sset, train_split, val_split, plan, ctx, self.transform)
        self.steps = len(self.train_loader)
        dropped = self.train_loader.sampler.dropped()
        if dropped:
            say(f"--compile: the last {dropped} training images of each epoch's order are left out "
                f"(a partial batch would recompile)")
        self.fwd = wrap_forward(self.model, plan, ctx)
        self.history: list[dict] = []
        self.best_f1 = -1.0
        self.position = RunPosition()
        self.validate = Validator(sset, self.val_loader, plan, ctx, self.transform, self.prec)
        self.budget = TimeBudget(plan, ctx, self.steps, len(self.val_loader) if self.val_loader is not None else 0,
                                 self.validate.scores)

    def close(self) -> None:
        """Stop the loaders' worker processes."""
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                loader.close()

    def restore(self, ckpt: dict, path: Path) -> None:
        """Continue from a checkpoint: weights, optimiser, scaler, RNGs (:func:`restore_run`), then
        the position, history and best score."""
        self.history, self.best_f1, self.position = restore_run(ckpt, path, self)
        self.budget.restore(self.history)   # its estimate of a validation
        e, k = self.position.epoch, self.position.step
        self.summary += f"\nresumed from {path}: epoch {e + 1}" + (f", batch {k + 1} of {self.steps}" if k else "")

    def _payload(self, position: RunPosition, gather: bool = True) -> dict:
        # every rank's RNG state, for an exact resume (a collective: all ranks call it)
        rng = distributed.gather_objects(self.ctx, rng_state(self.transform)) if gather else [rng_state(self.transform)]
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.prec.scaler.state_dict(), "epoch": position.epoch - 1,
                "position": position.to_dict(), "precision": self.prec.name,
                "best_f1": self.best_f1, "history": self.history, "rng": rng, "world_size": self.ctx.world_size,
                "class_names": self.sset.class_names, "mean": self.sset.mean.tolist(), "std": self.sset.std.tolist(),
                "config": self.plan.to_dict(), "preprocess": self.sset.manifest["options"],
                "shards": str(self.sset.root)}

    def run(self, stop_after: Optional[int] = None, on_step: Optional[Callable[[int, int], None]] = None) -> dict:
        o, ctx = self.plan.optim, self.ctx
        self.say(self.summary)
        # wall_s in metrics.csv: seconds of this run so far (training, validation and checkpoints), the
        # time-to-accuracy clock; a resumed run continues it from the last recorded epoch.
        offset = float(self.history[-1].get("wall_s") or 0.0) if self.history else 0.0
        if self.position.partial is not None:  # the part of an epoch trained before an interrupt
            offset += self.position.partial.seconds
        t_run = time.perf_counter()

        def wall_s() -> float:
            return offset + time.perf_counter() - t_run

        if ctx.is_main:
            write_text(self.out / "config.json", json.dumps({
                **self.plan.to_dict(), "shards": str(self.sset.root), "world_size": ctx.world_size,
                "precision": self.prec.name,
                "shards_fingerprint": self.sset.manifest.get("fingerprint")}, indent=2) + "\n")
        start = self.position.epoch
        last = o.epochs if stop_after is None else min(o.epochs, start + stop_after)
        with StopRequest() as stop:
            for epoch in range(start, last):
                stats = self._train_epoch(epoch, stop, on_step)
                if stats is None:  # stopped inside the epoch: interrupted.pt holds the position
                    raise Stopped(stop.signum)
                # decided before validating: an epoch the budget makes the run's last is validated
                # even if it trained below the stored side, so a budgeted run always has a best.pt
                ends = epoch + 1 < last and self.budget.over(epoch, stats, wall_s(),
                                                             res_at(o, epoch + 1, self.plan.model.image_size))
                self._end_epoch(epoch, stats, wall_s, final=ends)
                if stop.agreed(ctx, 0) and epoch + 1 < last:
                    self.say(f"interrupted after epoch {epoch + 1}; continue with --resume {self.out / 'last.pt'}")
                    raise Stopped(stop.signum)
                if ends:
                    self.say(f"time budget of {self.plan.run.minutes:g} min: stopping after epoch {epoch + 1} "
                             f"(another would end past it); --resume {self.out / 'last.pt'} --epochs "
                             f"{o.epochs} continues")
                    break
        scored = [h for h in self.history if h.get("val_f1") is not None]
        best = max(scored, key=lambda h: h["val_f1"]) if scored else {}
        return {"out": str(self.out), "history": self.history, "best": best, "device": str(ctx.device),
                "rank": ctx.rank, "world_size": ctx.world_size, "amp": self.prec.name,
                "config": self.plan.to_dict(), "model": self.model, "has_val": self.val_loader is not None,
                "averaged": self.ema.module if self.ema is not None else None}

    def _end_epoch(self, epoch: int, stats: dict, wall_s: Callable[[], float], final: bool = False) -> None:
        """Validate, record, checkpoint and plot one finished epoch.

        Epochs trained below the stored side (progressive resizing) are not
        validated (:meth:`Validator.scores`), except the run's last, or
        ``final``: the last one a time budget lets it train.
        """
        low = not (final or self.validate.scores(epoch, stats["res"]))
        t_end = time.perf_counter()
        val = self.validate(epoch, self.model, self.ema.module if self.ema is not None else None, score=not low)
        o = self.plan.optim  # lr: the schedule after the epoch (the next step's), as OneCycleLR reported it
        row = {"epoch": epoch + 1, **stats, "val_loss": val["loss"], "val_acc": val["acc"], "val_f1": val["f1"],
               "lr": lr_at(o, (epoch + 1) * self.steps, o.epochs * self.steps)[0],
               "val_f1_small": val["f1_small"], "wall_s": wall_s()}
        self.history.append(row)
        improved = val["f1"] is not None and val["f1"] > self.best_f1
        self.best_f1 = max(self.best_f1, val["f1"]) if val["f1"] is not None else self.best_f1
        self.position = RunPosition(epoch + 1)
        data = self._payload(self.position)
        if self.ctx.is_main:
            save_checkpoint(self.out / "last.pt", data)
            if improved:
                save_checkpoint(self.out / "best.pt", data)
            (self.out / "interrupted.pt").unlink(missing_ok=True)  # superseded by last.pt
            write_records(self.out, self.history)
        if val["f1"] is not None:  # what a validated epoch adds to its training (the budget's estimate)
            self.budget.val_seconds = time.perf_counter() - t_end
        v = (f"val loss {val['loss']:.4f} acc {val['acc']:.3f} macro-F1 {val['f1']:.3f}" if val["f1"] is not None
             else f"not validated (trained at {stats['res']} px)" if low else "no val split")
        self.say(f"epoch {epoch + 1}/{self.plan.optim.epochs}: train loss {stats['train_loss']:.4f} "
                 f"acc {stats['train_acc']:.3f} | {v} | {stats['seconds']:.1f} s, {stats['images_per_s']:.0f} img/s, "
                 f"data wait {100 * stats['data_wait']:.1f}%"
                 + (f", {stats['res']} px" if stats["res"] != self.plan.model.image_size else "")
                 + (" *best*" if improved else ""))

    def _train_epoch(self, epoch: int, stop: StopRequest, on_step) -> Optional[dict]:
        """One epoch from the current position; None if a signal stopped it (``interrupted.pt`` written).

        Nothing in the step loop waits for the device: batches, indices and
        labels arrive asynchronously, the running sums stay on the device,
        and the NaN check reads a flag copied to pinned memory 20 steps
        earlier once its copy has landed (``sync_debug`` makes any sync an
        error, as the CUDA test runs it).
        """
        loader, o, ctx, dev = self.train_loader, self.plan.optim, self.ctx, self.ctx.device
        self.model.train()
        self.transform.train_size = res_at(o, epoch, self.plan.model.image_size)
        state = self.position.loader_state(epoch)   # mid-epoch after a resume, else the epoch's start
        loader.load_state_dict(state)
        first = state["batch"]
        sums = EpochSums(dev, self.position.partial if first else None, ctx.rank)
        check = NanCheck(sums.bad)
        t0 = time.perf_counter() - sums.carried_seconds
        bar = tqdm(total=self.steps, initial=first, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                   disable=not self.progress)
        step = first
        with steploop.sync_debug(self.sync_debug if dev.type == "cuda" else None), \
                self._store_failure(epoch, sums, lambda: step, t0, bar):
            for x, yb in loader.timed():   # normalised and augmented on the device by the loader's transform
                set_lr(self.optimizer, o, epoch * self.steps + step, o.epochs * self.steps)
                loss, logits, applied = self.prec.step(self.fwd, self.optimizer, x, yb, o.label_smoothing)
                if self.ema is not None:
                    self.ema.update()
                sums.add(loss, logits, yb, applied)
                step += 1
                bar.update()
                if on_step is not None:
                    on_step(epoch, step)
                # Under torchrun the check waits for the epoch's all-reduce, so
                # every rank stops together instead of one hanging.
                if step % 20 == 0 and not ctx.distributed and check.failed():
                    break
                if step < self.steps and stop.agreed(ctx, step):
                    break
        bar.close()
        if stop.requested and step < self.steps and not check.failed(final=True):
            self._save_interrupted(epoch, sums, time.perf_counter() - t0)
            return None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if ctx.distributed:  # the epoch's sums over every rank
            sums.all_reduce(ctx)
        if int(sums.bad):
            kept = (f"the last good checkpoint is kept ({self.out / 'last.pt'}, epoch {epoch})"
                    if (self.out / "last.pt").exists() else "no checkpoint was written yet")
            raise TrainingError(f"loss became nan or inf in epoch {epoch + 1}; {kept}; try a lower --lr or --no-amp")
        return {**sums.stats(loader.wait_seconds, seconds), "res": self.transform.train_size, **peak_memory_mb(dev)}

    @contextlib.contextmanager
    def _store_failure(self, epoch: int, sums: EpochSums, step: Callable[[], int], t0: float, bar):
        """A set in object storage that fails mid-epoch (after the store's retries) stops the run as
        SIGTERM does: ``interrupted.pt`` at the last whole step, then the store's one line. Under torchrun
        the other ranks cannot join that save; the run stops with its last epoch's checkpoint."""
        try:
            yield
        except StoreError as exc:
            if self.ctx.distributed:
                raise
            bar.close()
            self._save_interrupted(epoch, sums, time.perf_counter() - t0)
            raise StoreError(f"{exc} (the run stopped in epoch {epoch + 1} after batch {step()}; once the store "
                             f"answers, continue with --resume {self.out / 'interrupted.pt'})") from None

    def _save_interrupted(self, epoch: int, sums: EpochSums, seconds: float) -> None:
        """Write ``interrupted.pt`` at the loader's position inside ``epoch`` (every rank calls it)."""
        if self.ctx.distributed:  # the partial epoch's sums over every rank
            sums.all_reduce(self.ctx, with_bad=False)
        state = self.train_loader.state_dict()
        self.position = RunPosition(state["epoch"], state["batch"],
                                    sums.partial(self.train_loader.wait_seconds, seconds))
        # under torchrun every rank stopped at this step: gather their RNG states, rank 0 writes
        payload = self._payload(self.position, gather=self.ctx.distributed)
        if self.ctx.is_main:
            save_checkpoint(self.out / "interrupted.pt", payload)
        # no rank exits before the checkpoint is whole: a launcher stops the others when one exits
        distributed.barrier(self.ctx)
        self.say(f"interrupted in epoch {epoch + 1} after batch {state['batch']} of {self.steps}; continue with "
                 f"--resume {self.out / 'interrupted.pt'}")
