"""Seeded, reproducible training of a searched architecture on a data set (`--objective accuracy`).

The network trained is the searched architecture adapted to the data (`adapt_config`), by one rule:

1. the first patch embedding takes the data's channels (`in_chans`), the classifier its classes;
2. every width is divided by `width_div` (default 4, so head_dim 16/32 trains as 4/8; the number of heads
   is kept where it divides the new width), so that one candidate trains in seconds on a CPU; depth,
   block kind, kernel size and MLP ratio of every stage are kept;
3. patch sizes: the deployed ones, with the largest halved (the earliest stage on ties) until the last
   stage keeps at least MIN_LAST_TOKENS = 2 tokens per side, i.e. until round(S / total stride) >= 2 for
   the data's longer side S (a patch size never drops below 1);
4. the input side is S rounded to the nearest multiple of that total stride (halves up); the images are
   resized to it once (bilinear, antialiased when shrinking; non-square images are stretched).

So the default space (patch sizes 4/2/2/2, stride 32) trains on 28x28 Fashion-MNIST with patch sizes
2/2/2/2 on 32x32 inputs (16, 8, 4, 2 tokens per side); on 33x33 images also at 32x32; on 20x20 with
1/2/2/2 at 24x24; on 224x224 as deployed.

Training: AdamW, one epoch of linear warm-up then cosine decay over `epochs`, cross-entropy, batches of
`batch_size` (a last batch of one image is skipped: BatchNorm needs two). Validation: `val_images` images
held out of the training set (at most a fifth of it; the test split is never used to choose), the
training subset `train_images` drawn from the rest; both drawn once from `seed`, so every candidate sees
the same images. Reproducible: initialisation and batch order come from `seed` under
torch.random.fork_rng (the caller's generator is left alone), so the same seed and thread count give the
same accuracy.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

import container
from bench.timing import intra_op_threads
from container import NetworkConfig, StageConfig

from search.scoring.data import Dataset
from search.space import SearchInputError

MIN_LAST_TOKENS = 2
EVAL_BATCH = 512
EpochCallback = Callable[[int, float], None]  # (epoch from 1, validation accuracy); may raise to stop


@dataclass(frozen=True)
class TrainingSettings:
    """The fidelity of one candidate's training."""

    epochs: int = 3
    train_images: int | None = 3000  # None: every training image not held out for validation
    val_images: int = 1000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    width_div: int = 4
    threads: int | None = None  # intra-op threads while training (None: torch's default)

    def __post_init__(self) -> None:
        for name, flag in (("epochs", "--epochs"), ("val_images", "--val-images"), ("batch_size", "--train-batch"),
                           ("width_div", "--train-width-div")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SearchInputError(f"{flag} {value}: must be an integer >= 1")
        if self.train_images is not None and (not isinstance(self.train_images, int) or self.train_images < 1):
            raise SearchInputError(f"--train-images {self.train_images}: must be an integer >= 1 (or 0 for all)")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise SearchInputError(f"--train-threads {self.threads}: must be an integer >= 1")
        for name, flag in (("lr", "--train-lr"), ("weight_decay", "weight_decay")):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
                    name == "lr" and value == 0):
                raise SearchInputError(f"{flag} {value}: must be a finite number > 0" if name == "lr"
                                       else f"{flag} {value}: must be a finite number >= 0")

    def identity(self) -> dict[str, Any]:
        """What decides the accuracy a candidate gets (the thread count only changes how fast)."""
        return {k: v for k, v in asdict(self).items() if k != "threads"}

    def split_sizes(self, n: int) -> tuple[int, int]:
        """(training images, validation images) drawn from a training set of `n`."""
        n_val = min(self.val_images, n // 5)
        rest = n - n_val
        return (rest if self.train_images is None else min(self.train_images, rest)), n_val

    def describe(self, n: int | None = None) -> str:
        """The fidelity in words; with `n`, the image counts it gives on a training set of `n` images."""
        n_train, n_val = self.split_sizes(n) if n is not None else (self.train_images or "all", self.val_images)
        return (f"{self.epochs} epochs on {n_train} training images ({n_val} held out for validation), "
                f"width / {self.width_div}, AdamW lr {self.lr:g}, weight decay {self.weight_decay:g}, "
                f"batch {self.batch_size}")


# --- the adapted network -------------------------------------------------------------------------------------


def adapted_patches(patch_sizes: tuple[int, ...] | list[int], side: int) -> tuple[list[int], int]:
    """(patch sizes, input side) for images of `side` pixels: rules 3 and 4 of the module docstring."""
    patches = list(patch_sizes)

    def tokens() -> int:
        return math.floor(side / math.prod(patches) + 0.5)

    while tokens() < MIN_LAST_TOKENS and max(patches) > 1:
        i = patches.index(max(patches))
        patches[i] = max(1, patches[i] // 2)
    stride = math.prod(patches)
    return patches, max(1, tokens()) * stride


def adapt_config(config: NetworkConfig, *, channels: int, height: int, width: int, num_classes: int,
                 width_div: int = 4) -> NetworkConfig:
    """The searched architecture at the data's scale (the module docstring's rule)."""
    patches, side = adapted_patches([s.patch_size for s in config.stages], max(height, width))
    stages = []
    for s, patch in zip(config.stages, patches):
        dim = max(1, s.dim // width_div)
        stages.append(StageConfig(depth=s.depth, dim=dim, heads=math.gcd(s.heads, dim), kind=s.kind,
                                  kernel_size=s.kernel_size, mlp_ratio=s.mlp_ratio, patch_size=patch))
    return NetworkConfig(stages=tuple(stages), image_size=side, in_chans=channels, num_classes=num_classes,
                         mixing=config.mixing)


# --- the data it trains on ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """The training subset and the validation split, resized to one input side."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int

    @property
    def side(self) -> int:
        return int(self.x_train.shape[-1])


def split_indices(n: int, settings: TrainingSettings, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) into a training set of `n` images, drawn once from `seed`."""
    n_train, n_val = settings.split_sizes(n)
    if n_val < 1 or n_train < 2:
        raise SearchInputError(f"--data: {n} training images are too few to hold out a validation split "
                               f"(need at least 5)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:n_val + n_train], order[:n_val]


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-2:] == (side, side):
        return x
    shrink = side < max(x.shape[-2:])
    return torch.cat([F.interpolate(x[i:i + 4096], size=(side, side), mode="bilinear", align_corners=False,
                                    antialias=shrink) for i in range(0, len(x), 4096)])


def prepare(dataset: Dataset, settings: TrainingSettings, seed: int, side: int) -> TrainingData:
    train, val = split_indices(len(dataset.y_train), settings, seed)
    return TrainingData(x_train=resize(dataset.x_train[train], side), y_train=dataset.y_train[train],
                        x_val=resize(dataset.x_train[val], side), y_val=dataset.y_train[val],
                        num_classes=dataset.num_classes)


# --- training -------------------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    curve: list[float]  # validation accuracy after each epoch trained
    train_s: float  # wall time of training and validation
    final_loss: float
    test_accuracy: float = math.nan  # on the `test` split train() was given, after the last epoch

    @property
    def accuracy(self) -> float:
        return self.curve[-1] if self.curve else math.nan

    @property
    def epochs(self) -> int:
        return len(self.curve)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum())
                      for i in range(0, len(y), EVAL_BATCH))
    return correct / len(y)


def train(config: NetworkConfig, data: TrainingData, settings: TrainingSettings, seed: int,
          on_epoch: EpochCallback | None = None,
          test: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainingResult:
    """Train the (adapted) `config` from a seeded initialisation; validation accuracy after every epoch goes
    to `on_epoch`, which may raise to stop early (then nothing is returned). With `test` (images at the
    data's side, labels), the accuracy on it after the last epoch: never used to choose anything."""
    if config.image_size != data.side:
        raise ValueError(f"config.image_size {config.image_size} != the data's side {data.side}")
    start = time.perf_counter()
    with intra_op_threads(settings.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = container.build(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        n = len(data.y_train)
        steps = math.ceil(n / settings.batch_size)
        total = settings.epochs * steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / steps) * 0.5 * (1 + math.cos(math.pi * step / total)))
        generator = torch.Generator().manual_seed(seed)
        curve: list[float] = []
        loss = torch.zeros(())
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, settings.batch_size):
                batch = order[i:i + settings.batch_size]
                if len(batch) < 2:
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
                loss.backward()
                optimizer.step()
                scheduler.step()
            curve.append(accuracy(model, data.x_val, data.y_val))
            if on_epoch is not None:
                on_epoch(epoch, curve[-1])
        test_accuracy = accuracy(model, *test) if test is not None else math.nan
    return TrainingResult(curve=curve, train_s=time.perf_counter() - start, final_loss=float(loss.detach()),
                          test_accuracy=test_accuracy)


__all__ = ["EpochCallback", "MIN_LAST_TOKENS", "TrainingData", "TrainingResult", "TrainingSettings", "accuracy",
           "adapt_config", "adapted_patches", "prepare", "resize", "split_indices", "train"]
