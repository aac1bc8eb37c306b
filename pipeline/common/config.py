"""Configuration: one frozen dataclass per concern.

Every config is saved verbatim (``dataclasses.asdict``) into the manifest,
each checkpoint and each bench result, so a figure or a model can always be
traced back to the exact options that made it (nanoGPT's ``GPTConfig``).
"""

from __future__ import annotations

import dataclasses
import re
import math
from dataclasses import dataclass
from typing import Any, Optional

from model import rules

from .errors import ConfigError

FIT_POLICIES = ("squash", "pad", "crop")
CACHE_MODES = ("auto", "device", "ram", "none")

# One image-size rule for preprocess, train, evaluate and predict: the networks' (model.rules).
SIZE_MIN, SIZE_MAX, SIZE_STEP = rules.SIZE_MIN, rules.SIZE_MAX, rules.SIZE_STEP

# Near-duplicate radius in bits: past 10, groups chain across unrelated
# frames (one group of 1,708 images at 10 on the real set; BENCHMARKS.md).
NEAR_DUP_MAX = 10

# Progressive resizing's sides are multiples of 8: ResNetS halves the side
# three times, so every stage keeps whole pixels.
RES_STEP = 8


def check_image_size(size: int) -> int:
    """``size`` if it is a square side every stage accepts (:func:`model.rules.size_problem`), else ConfigError."""
    problem = rules.size_problem(size)
    if problem:
        raise ConfigError(problem)
    return size


@dataclass(frozen=True)
class Range:
    """The one statement of an option's bounds: the configs check values with it and
    ``cli.py`` builds its click types from it (so no bound is written twice)."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def text(self) -> str:
        return f"{'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"

    def holds(self, value) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (value < self.hi if self.hi_open else value <= self.hi)
                and (value > self.lo if self.lo_open else value >= self.lo)
                and (not self.integer or float(value).is_integer()))

    def check(self, name: str, value) -> None:
        """ConfigError unless ``value`` is finite and in range (a whole number where ``integer``)."""
        if not self.holds(value):
            kind = "a whole number" if self.integer else "a finite number"
            raise ConfigError(f"{name} must be {kind} in {self.text()}, got {value}")


# Every numeric option of the configs and the command line, stated once.
RANGES = {
    "val_frac": Range(0.0, 0.9),
    "shard_mb": Range(0.0, 4096.0, lo_open=True),
    "min_side": Range(1, 4096, integer=True),
    "near_dup": Range(0, NEAR_DUP_MAX, integer=True),
    "batch_size": Range(1, 65536, integer=True),
    "workers": Range(0, 512, integer=True),
    "processes": Range(1, 512, integer=True),        # preprocess/synth/bench: at least one process
    "prefetch_factor": Range(1, 64, integer=True),
    "message_batches": Range(0, 1024, integer=True),
    "balance": Range(0.0, 1.0),
    "lr": Range(0.0, 10.0, lo_open=True),
    "weight_decay": Range(0.0, 1.0),
    "label_smoothing": Range(0.0, 0.5),
    "epochs": Range(1, 100_000, integer=True),
    "min_res": Range(0, SIZE_MAX, integer=True),      # and a multiple of RES_STEP (0: off): OptimConfig
    "ema": Range(0.0, 1.0, hi_open=True),
    "minutes": Range(0.0, 100_000.0),
    "scale": Range(0.0, 100.0, lo_open=True),
    "top_k": Range(1, 1000, integer=True),
    "steps": Range(1, 10_000, integer=True),
    "limit": Range(0, 2 ** 31, integer=True),
    "size": Range(SIZE_MIN, SIZE_MAX, integer=True),  # and a multiple of SIZE_STEP: check_image_size
    "width": Range(rules.WIDTH_MIN, rules.WIDTH_MAX, integer=True),   # channels of one ResNetS stage
}


def check_range(name: str, value) -> None:
    """ConfigError unless ``value`` is in the option's range (:data:`RANGES`)."""
    RANGES[name].check(name, value)


# Every choice of the configs and the command line, stated once.
RECIPES = ("default", "notebook")
COMPRESSIONS = ("none", "gzip", "lzf")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SynthConfig:
    """The embedded look-alike dataset.

    Attributes:
        scale: multiplier on the real per-class counts (1.0 = 16,764 images).
        seed: one seed for every byte written.
        min_per_class: floor on each class's count, so the long tail stays.
        quirk_rate: quirk files per image (each quirk kind at least once).
        jpeg_quality: libjpeg quality; 75 gives about 26 KB at 0.17 MP.
    """

    scale: float = 1.0
    seed: int = 0
    min_per_class: int = 3
    quirk_rate: float = 0.001
    jpeg_quality: int = 75


@dataclass(frozen=True)
class PreprocessConfig:
    """Decode + resize + split + shard options.

    Attributes:
        size: square output side in pixels (64 and 128 are the references).
        fit: aspect policy: ``squash`` (the notebooks'), ``pad`` or ``crop``.
        val_frac: validation fraction per class (0.15 = CNN4Conv's split).
        seed: seeds the split and the shard order.
        shard_mb: target shard size in MB of pixels (64 MB = 1,365 images at
            128 px; big enough for long contiguous reads, small enough that
            the writer's buffer keeps memory bounded).
        min_side: images whose shorter side is below this many pixels are
            skipped as unusable thumbnails.
        compression: HDF5 filter for ``images`` (None = contiguous, fastest).
        near_dup: images whose 64-bit perceptual hashes are within this many
            bits are one near-duplicate group, kept on one side of the split
            (0: byte-identical files only). The default is the smallest
            radius that leaves under 1% of the real val images with a
            pixel-near train image (benchmarks/history/split.md "Near-duplicates").
    """

    size: int = 128
    fit: str = "squash"
    val_frac: float = 0.15
    seed: int = 42
    shard_mb: float = 64.0
    min_side: int = 16
    compression: Optional[str] = None
    near_dup: int = 6

    def __post_init__(self) -> None:
        check_image_size(self.size)
        if self.fit not in FIT_POLICIES:
            raise ConfigError(f"fit must be one of {FIT_POLICIES}, got {self.fit!r}")
        check_range("val_frac", self.val_frac)
        check_range("shard_mb", self.shard_mb)
        check_range("min_side", self.min_side)
        if self.compression not in (None, *COMPRESSIONS[1:]):
            raise ConfigError(f"compression must be None, 'gzip' or 'lzf', got {self.compression!r}")
        check_range("near_dup", self.near_dup)


@dataclass(frozen=True)
class LoaderConfig:
    """How batches travel from shards to the model.

    Attributes:
        batch_size: images per batch.
        workers: DataLoader worker processes (0 = in the main process).
        cache: ``device`` / ``ram`` keep the split resident, ``none`` streams
            from shards, ``auto`` picks the first that fits.
        augment: random flip + small random resized crop, on the device.
        balance: class-balanced sampling (with replacement) for the long tail:
            0 off, 1 every class equally likely, 0.5 weights of n_c ** 0.5.
        prefetch_factor: batches in flight per worker.
        seed: the epoch order is a function of (seed, epoch) alone.
        drop_last: training epochs of whole batches only (set by ``--compile``).
        reuse_buffers: CPU batches may share memory with later ones (saves a
            copy; for loops done with a batch before the next, as ``train``).
        message_batches: batches a streaming worker gathers per task and
            hands over in one message; 0 sizes it (about 32 MB a message,
            the workers' ring within 1 GiB and a quarter of free /dev/shm).
    """

    batch_size: int = 128
    workers: Optional[int] = None
    cache: str = "auto"
    augment: bool = True
    balance: float = 0.0
    prefetch_factor: int = 4
    seed: int = 42
    drop_last: bool = False
    reuse_buffers: bool = False
    message_batches: int = 0

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size)
        check_range("message_batches", self.message_batches)
        if self.workers is None:  # one default for the library and the CLI
            from .env import default_workers

            object.__setattr__(self, "workers", default_workers())
        check_range("workers", self.workers)
        check_range("prefetch_factor", self.prefetch_factor)
        check_range("balance", float(self.balance))
        if self.cache not in CACHE_MODES:
            raise ConfigError(f"cache must be one of {CACHE_MODES}, got {self.cache!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture choice; the shards fix image_size and num_classes.

    Attributes:
        name: a ``model.MODELS`` name.
        num_classes: output logits (the shards' classes).
        image_size: input side in pixels (the shards' side).
        widths: ``resnet`` only: channels of its stem and three stages; empty: the network's own
            (32, 64, 128, 256), which is also what a checkpoint saved without this field holds.
    """

    name: str = "bart"
    num_classes: int = 42
    image_size: int = 128
    widths: tuple = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", check_widths(self.widths, self.name))  # a checkpoint's holds a list


def check_widths(widths, model: str = "resnet") -> tuple:
    """``widths`` as a tuple if ``model`` takes them (:func:`model.rules.widths_problem`: one rule
    for the config, the factory and the command line), else ConfigError."""
    problem = rules.widths_problem(widths, model)
    if problem:
        raise ConfigError(problem)
    return tuple(int(w) for w in widths) if widths else ()


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule.

    Attributes:
        optimizer: ``adam`` (both notebooks) or ``adamw``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (adamw only).
        schedule: ``constant`` (notebooks) or ``onecycle`` (warm-up + cosine).
        label_smoothing: cross-entropy label smoothing.
        epochs: passes over the training split.
        ema: per-step decay of an exponential moving average of the
            weights, which validation, ``best.pt`` and inference then use
            (0: off; the warm-up of :class:`~pipeline.training.optim.WeightEma`
            governs until (1 + n) / (10 + n) reaches it: 1,790 steps for 0.995).
        min_res: progressive resizing: the side (px, a multiple of 8) the
            first epochs train at, the stored batches downsampled on the
            device (0: off; only for models that pool globally, ``resnet``).
            Validation and inference always run at the stored size.
        ramp: (start, end) as fractions of ``epochs``: the epochs before
            ``start`` train at ``min_res``, those from ``end`` on at the
            stored size, the ones between on a linear ramp
            (:func:`~pipeline.training.optim.res_at`).
    """

    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.1
    epochs: int = 12
    ema: float = 0.0
    min_res: int = 0
    ramp: tuple = (0.5, 0.75)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ramp", tuple(self.ramp))  # a checkpoint's JSON-like config holds a list
        check_range("min_res", self.min_res)
        if self.min_res % RES_STEP:
            raise ConfigError(f"min_res must be a multiple of {RES_STEP} pixels (0: off), got {self.min_res}")
        if (len(self.ramp) != 2 or not all(Range(0.0, 1.0).holds(r) for r in self.ramp)
                or self.ramp[0] > self.ramp[1]):
            raise ConfigError(f"ramp must be (start, end) with 0 <= start <= end <= 1 (fractions of the epochs), "
                              f"got {self.ramp}")
        if self.optimizer not in ("adam", "adamw"):
            raise ConfigError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("constant", "onecycle"):
            raise ConfigError(f"schedule must be constant or onecycle, got {self.schedule!r}")
        check_range("lr", self.lr)
        check_range("weight_decay", self.weight_decay)
        check_range("label_smoothing", self.label_smoothing)
        check_range("epochs", self.epochs)
        check_range("ema", self.ema)


@dataclass(frozen=True)
class StorageConfig:
    """Where a node keeps the shards it fetches of a set in object storage (``s3://``, ``gs://``, ``http(s)://``).

    Attributes:
        cache_dir: the node's cache folder, shared by its ranks and loader
            workers ("" : ``$XDG_CACHE_HOME/simpsons-shards``, else ``~/.cache/simpsons-shards``).
        cache_limit: bytes the cached shards may take (0: no limit but the
            disk's); least recently used shards are evicted under it.
    """

    cache_dir: str = ""
    cache_limit: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.cache_limit, int) or self.cache_limit < 0:
            raise ConfigError(f"cache_limit must be a whole number of bytes >= 0, got {self.cache_limit!r}")


_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str) -> int:
    """``"500MB"``, ``"20GB"``, ``"1.5GiB"``, ``"0"`` as bytes.

    Raises:
        ConfigError: not a size.
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"{text!r} is not a size; write it as 500MB, 20GB or 1.5GiB (0: no limit)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass(frozen=True)
class RunConfig:
    """Where and how a training run executes."""

    seed: int = 42
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    sync_bn: bool = False
    out: str = "runs/default"
    recipe: str = "default"
    exact: bool = False  # CUDA: no cuDNN autotune, no TF32, deterministic cuDNN (bit-exact reruns)
    tta: bool = False  # validate and predict with the mean logits of each image and its mirror
    minutes: float = 0.0  # wall-time budget: stop before an epoch that would end past it (0: none)


@dataclass(frozen=True)
class TrainPlan:
    """Everything one run is made of, saved into every checkpoint."""

    model: ModelConfig
    optim: OptimConfig
    loader: LoaderConfig
    run: RunConfig

    def to_dict(self) -> dict:
        return {k: to_dict(getattr(self, k)) for k in ("model", "optim", "loader", "run")}


# The default recipe's resnet: stem 32, stages 48-96-192 (1.1 M parameters at 27 classes).
RESNET_WIDTHS = (32, 48, 96, 192)


def recipe(name: str, model: str) -> tuple[OptimConfig, dict]:
    """(optimiser config, the rest: loader fields, ``tta``, ``widths``) of a named recipe.

    ``notebook`` is the chosen model's notebook exactly: Adam at its lr,
    batch 32, its epoch count, constant lr, no smoothing, no augmentation.
    ``default`` is the best measured here (BENCHMARKS.md): AdamW with a
    one-cycle schedule, label smoothing .1, batch 128, flip + crop augmentation,
    square-root class balance, test-time flip, a moving average of the weights;
    for ``resnet`` also its narrower widths and 20 epochs.
    """
    from model import NOTEBOOK_RECIPES  # torch-free: the model package's table

    if name == "notebook":
        if model not in NOTEBOOK_RECIPES:
            raise ConfigError(f"{model} is not a notebook's network, so it has no notebook recipe; "
                              f"use --recipe default")
        nb = NOTEBOOK_RECIPES[model]
        return (OptimConfig(optimizer="adam", lr=nb["lr"], weight_decay=0.0, schedule="constant",
                            label_smoothing=0.0, epochs=nb["epochs"]),
                {"batch_size": nb["batch_size"], "augment": False, "seed": nb["seed"]})
    if name == "default":
        # Square-root class balance for the long tail; test-time flip; validation on a moving average of the
        # weights (benchmarks/history/training.md "A moving average of the weights"). Progressive resizing, for the models
        # that pool globally (make_plan): the first 40% of the epochs at 32 px, a ramp to 60%, the rest at
        # 64 px (benchmarks/history/training.md "Time to accuracy, halved").
        kw = {"batch_size": 128, "augment": True, "balance": 0.5, "tta": True}
        # Time to accuracy on the real images: the narrower resnet's steps are cheaper and, over 20
        # epochs (9 at 32 px, 40/48/56 px, 8 at 64 px), it reaches the previous default's accuracy
        # sooner and ends with a higher macro-F1 (benchmarks/history/training.md "A narrower network,
        # longer").
        resnet = model == "resnet"
        return (OptimConfig(epochs=20 if resnet else 15, ema=0.995, min_res=32, ramp=(0.4, 0.6)),
                {**kw, "widths": RESNET_WIDTHS} if resnet else kw)
    raise ConfigError(f"unknown recipe {name!r}; choose one of {RECIPES}")


def make_plan(model: str = "resnet", recipe_name: str = "default", *, epochs: Optional[int] = None,
              batch_size: Optional[int] = None, lr: Optional[float] = None, seed: Optional[int] = None,
              augment: Optional[bool] = None, balance: Optional[float] = None, workers: Optional[int] = None,
              cache: str = "auto", device: str = "auto", amp: bool = False, compile: bool = False,
              exact: bool = False, sync_bn: bool = False, out: Optional[str] = None,
              tta: Optional[bool] = None, minutes: float = 0.0, ema: Optional[float] = None,
              min_res: Optional[int] = None, widths: Optional[tuple] = None) -> TrainPlan:
    """The one place a run's configuration is made: a named recipe for a model, then overrides.

    Args:
        model: ``resnet`` (the default: fastest to accuracy here), ``bart`` or ``cnn4conv`` (the notebooks').
        recipe_name: ``default`` (the best measured here) or ``notebook`` (the model's notebook exactly).
        epochs, batch_size, lr, seed, augment, balance, tta, ema, min_res: override the recipe's (None keeps it).
        widths: resnet's channels (stem and three stages), overriding the recipe's (None keeps it).
        workers: DataLoader workers per process (None: cores / local ranks).
        cache, device, amp, compile, exact, sync_bn: how it runs (see :class:`RunConfig`, :class:`LoaderConfig`).
        out: run folder (default ``runs/MODEL-RECIPE``).
        minutes: wall-time budget; training stops before an epoch that would end past it (0: none).

    Raises:
        ConfigError: an unknown recipe, a value out of its range, or progressive resizing for a
            model whose head needs one input size.
    """
    from model import ANY_SIZE

    optim, loader_kw = recipe(recipe_name, model)
    if model not in ANY_SIZE:  # the recipe's low-resolution epochs are for the models that pool globally
        optim = dataclasses.replace(optim, min_res=0)
    optim = dataclasses.replace(optim, **{k: v for k, v in (("epochs", epochs), ("lr", lr), ("ema", ema),
                                                            ("min_res", min_res)) if v is not None})
    if optim.min_res and model not in ANY_SIZE:
        raise ConfigError(f"progressive resizing (min_res {optim.min_res}) needs a model that pools globally "
                          f"({', '.join(ANY_SIZE)}); {model} flattens one input size: drop --min-res")
    recipe_seed = loader_kw.pop("seed", 42)
    seed = recipe_seed if seed is None else seed
    recipe_tta = loader_kw.pop("tta", False)
    recipe_widths = loader_kw.pop("widths", ())
    widths = recipe_widths if widths is None else widths
    loader_kw.update({k: v for k, v in (("batch_size", batch_size), ("augment", augment), ("balance", balance))
                      if v is not None})
    loader = LoaderConfig(**loader_kw, seed=seed, workers=workers, cache=cache)
    run = RunConfig(seed=seed, device=device, amp=amp, compile=compile, exact=exact, sync_bn=sync_bn,
                    out=str(out or f"runs/{model}-{recipe_name}"), recipe=recipe_name,
                    tta=recipe_tta if tta is None else tta, minutes=minutes)
    return TrainPlan(ModelConfig(name=model, widths=widths), optim, loader, run)


def to_dict(cfg: Any) -> dict:
    """A config as a plain JSON-able dict."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a config, ignoring keys a newer version may have added."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class BenchConfig:
    """One ``cli.py bench`` run, saved with its figures.

    Attributes:
        data_dir: the image folder measured (class sub-folders).
        size: square image side in pixels.
        model: network for the training-step stage.
        workers: worker processes for every parallel variant.
        batch_size: the project's batch size (the notebooks' is 32).
        quick: a smoke run (< 1 minute on 2 cores): fewer images and steps.
        limit: at most this many images (0 = all).
        repeats: timed repeats (interleaved rounds for loading) of each cheap
            measurement; the median is kept.
        min_seconds: a timed repeat of a loading measurement runs whole
            epochs until at least this long (an epoch of a small split lasts milliseconds).
        steps: timed training steps per variant.
    """

    data_dir: str = ""
    size: int = 128
    model: str = "bart"
    workers: int = 2
    batch_size: int = 128
    quick: bool = False
    limit: int = 0
    repeats: int = 5
    min_seconds: float = 0.5
    steps: int = 5

    @classmethod
    def create(cls, data_dir: str, *, size: int = 128, model: str = "bart", workers: Optional[int] = None,
               batch_size: Optional[int] = None, limit: Optional[int] = None, steps: Optional[int] = None,
               quick: bool = False) -> "BenchConfig":
        """A bench run as ``cli.py bench`` makes it: ``quick`` is a smoke run (under a minute on 2
        cores: 600 images, batch 32, 2 repeats of 0.05 s, 2 steps), and None keeps the defaults."""
        from .env import default_workers

        return cls(data_dir=str(data_dir), size=check_image_size(size), model=model,
                   workers=workers or default_workers(), batch_size=batch_size or (32 if quick else 128),
                   quick=quick, limit=limit if limit is not None else (600 if quick else 0),
                   repeats=2 if quick else 5, min_seconds=0.05 if quick else 0.5,
                   steps=steps or (2 if quick else 5))
