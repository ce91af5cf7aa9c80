"""Image classification data for `--objective accuracy`, read from local files only (nothing is downloaded).

`load_data(SPEC)` takes what `--data` takes:

* `fashion-mnist`: Fashion-MNIST (60,000 + 10,000 grey 28x28 images, 10 classes) from Debian's package
  `dataset-fashion-mnist` (FASHION_MNIST_DIR), or a directory the user names that holds the same four
  IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-...`);
* an `.npz` file with the arrays x_train, y_train, x_test, y_test: images N x H x W (one channel) or
  N x H x W x C (channels last), uint8 (0-255) or float; labels integers (any values, mapped in sorted
  order to classes 0..K-1);
* a folder of class subfolders of images (`DIR/<class>/<image>`, read with Pillow), or one with `train/`
  and `test/` folders laid out that way. Without them every class's last fifth (by file name) is the test
  split. Images are grey when every one is, else RGB; those whose size differs from the most common
  one are resized to it (bilinear).

Normalisation: uint8 / 255 (another integer type: / its maximum), float as given; then every channel is
standardised with the training set's mean and standard deviation. Anything wrong with the data raises
SearchInputError with one line naming it (the CLI exits 2).
"""
from __future__ import annotations

import gzip
import hashlib
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search.space import SearchInputError

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist installs it
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
USAGE = "give fashion-mnist, an .npz file with x_train, y_train, x_test, y_test, or a folder of class subfolders"


@dataclass(frozen=True)
class Dataset:
    """Images as float32 N x C x H x W (standardised per channel), labels as int64 classes 0..K-1."""

    name: str
    source: str  # the file or directory it was read from
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    digest: str  # of the raw arrays: two workers with the same digest train on the same data

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def height(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def width(self) -> int:
        return int(self.x_train.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.y_train)} training + {len(self.y_test)} test images, "
                f"{self.channels}x{self.height}x{self.width}, {self.num_classes} classes")

    def identity(self) -> dict[str, object]:
        return {"name": self.name, "train": len(self.y_train), "test": len(self.y_test),
                "shape": [self.channels, self.height, self.width], "classes": self.num_classes,
                "digest": self.digest}


def load_data(spec: str | Path, *, limit: int | None = None) -> Dataset:
    """The data set `--data SPEC` names; `limit` reads only the first `limit` images of each split."""
    text = str(spec).strip()
    if not text:
        raise SearchInputError(f"--data: empty; {USAGE}")
    if text == FASHION_MNIST:
        if not _has_idx(FASHION_MNIST_DIR):
            raise SearchInputError(f"--data {FASHION_MNIST}: not found in {FASHION_MNIST_DIR} (install it with "
                                   f"`apt-get install dataset-fashion-mnist`, or give a directory holding its "
                                   f"four IDX files)")
        return _from_idx(FASHION_MNIST_DIR, text, limit)
    path = Path(text).expanduser()
    if not path.exists():
        raise SearchInputError(f"--data {text}: no such file or directory ({USAGE})")
    if path.is_dir():
        if _has_idx(path):
            return _from_idx(path, text, limit)
        return _from_folder(path, text, limit)
    if path.suffix.lower() == ".npz":
        return _from_npz(path, text, limit)
    raise SearchInputError(f"--data {text}: not a data set ({USAGE})")


# --- the three formats -------------------------------------------------------------------------------------


def _idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_idx(directory: Path) -> bool:
    return all(_idx_path(directory, stem) is not None for stem in IDX_FILES.values())


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """An IDX array (gzip or plain), only its first `limit` items if given (the rest is never read)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, code, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or code not in _IDX_TYPES or ndim < 1:
                raise ValueError("not an IDX file")
            dims = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            n = dims[0] if limit is None else min(limit, dims[0])
            dtype = np.dtype(_IDX_TYPES[code])
            count = n * int(np.prod(dims[1:], dtype=np.int64))
            raw = f.read(count * dtype.itemsize)
    except (OSError, EOFError, ValueError, struct.error) as e:
        raise SearchInputError(f"--data: cannot read {path} ({e})") from None
    if len(raw) != count * dtype.itemsize:
        raise SearchInputError(f"--data: {path} is truncated")
    return np.frombuffer(bytearray(raw), dtype).astype(dtype.newbyteorder("="), copy=False).reshape(n, *dims[1:])


def _from_idx(directory: Path, text: str, limit: int | None) -> Dataset:
    arrays = {key: read_idx(_idx_path(directory, stem), limit) for key, stem in IDX_FILES.items()}
    # Named fashion-mnist wherever it lies: the digest, not the path, tells two copies apart.
    return _finish(FASHION_MNIST, str(directory), text, arrays, dict(enumerate(FASHION_MNIST_CLASSES)))


def _from_npz(path: Path, text: str, limit: int | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ARRAYS if key not in data.files]
            if missing:
                raise SearchInputError(f"--data {text}: missing array(s) {', '.join(missing)} "
                                       f"(an .npz needs x_train, y_train, x_test, y_test; it has "
                                       f"{', '.join(data.files) or 'none'})")
            arrays = {key: data[key] if limit is None else data[key][:limit] for key in ARRAYS}
    except SearchInputError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise SearchInputError(f"--data {text}: not a readable .npz file ({str(e).splitlines()[0]})") from None
    return _finish(path.stem, str(path), text, arrays, None)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path, text: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise SearchInputError(f"--data {text}: class folder {folder.name!r} holds no images "
                               f"({', '.join(IMAGE_SUFFIXES)})")
    return files


def _from_folder(root: Path, text: str, limit: int | None) -> Dataset:
    split = {"train": root / "train", "test": root / "test"}
    if all(p.is_dir() for p in split.values()):
        files = {key: {d.name: _images_in(d, text) for d in _class_dirs(folder)} for key, folder in split.items()}
        unknown = sorted(set(files["test"]) - set(files["train"]))
        if unknown:
            raise SearchInputError(f"--data {text}: test class folder {unknown[0]!r} has no train/ counterpart")
    else:
        per_class = {d.name: _images_in(d, text) for d in _class_dirs(root)}
        # Every class's last fifth, by file name, is held out: the same split on every machine.
        files = {"train": {c: f[:len(f) - len(f) // 5] for c, f in per_class.items()},
                 "test": {c: f[len(f) - len(f) // 5:] for c, f in per_class.items()}}
    classes = sorted(files["train"])
    if not classes:
        raise SearchInputError(f"--data {text}: no class subfolders (expected {text}/<class>/<image>)")
    listed = {key: [(f, classes.index(c)) for c in classes for f in files[key].get(c, [])][:limit]
              for key in ("train", "test")}
    images = {key: [_open_image(f, root, text) for f, _ in listed[key]] for key in listed}
    every = images["train"] + images["test"]
    mode = "L" if all(im.mode in GREY_MODES for im in every) else "RGB"
    size = max(Counter(im.size for im in every).items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1]))[0]
    arrays: dict[str, np.ndarray] = {}
    for key in ("train", "test"):
        pixels = [np.asarray(_resized(im.convert(mode), size), dtype=np.uint8) for im in images[key]]
        arrays[f"x_{key}"] = np.stack(pixels) if pixels else np.zeros((0, size[1], size[0]), np.uint8)
        arrays[f"y_{key}"] = np.array([label for _, label in listed[key]], dtype=np.int64)
    return _finish(root.name, str(root), text, arrays, dict(enumerate(classes)))


def _open_image(path: Path, root: Path, text: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (OSError, UnidentifiedImageError) as e:
        raise SearchInputError(f"--data {text}: cannot read image {path.relative_to(root)} "
                               f"({str(e).splitlines()[0]})") from None


def _resized(image, size: tuple[int, int]):
    from PIL import Image

    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


# --- checks and normalisation --------------------------------------------------------------------------------


def _check_images(key: str, x: np.ndarray, text: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise SearchInputError(f"--data {text}: {key} has shape {list(x.shape)}; expected N x H x W or N x H x W x C")
    if x.shape[1] in (1, 3) and x.shape[3] > 4:
        raise SearchInputError(f"--data {text}: {key} has shape {list(x.shape)}, which looks like N x C x H x W; "
                               f"give channels last (N x H x W x C)")
    if len(x) == 0:
        raise SearchInputError(f"--data {text}: {key} holds no images")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise SearchInputError(f"--data {text}: {key} has dtype {x.dtype}; expected uint8 or float images")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise SearchInputError(f"--data {text}: {key} holds NaN or infinite values")
    return x


def _check_labels(key: str, y: np.ndarray, n: int, text: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise SearchInputError(f"--data {text}: {key} has shape {list(y.shape)}; expected one label per image")
    if len(y) != n:
        image_key = "x_" + key.removeprefix("y_")
        raise SearchInputError(f"--data {text}: {image_key} has {n} images but {key} has {len(y)} labels")
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise SearchInputError(f"--data {text}: {key}: labels must be integers (dtype {y.dtype})")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise SearchInputError(f"--data {text}: {key}: labels must be integers (found {y[bad][0].item()!r})")
        y = y.astype(np.int64)
    return y


def _as_unit_float(x: np.ndarray) -> torch.Tensor:
    """N x C x H x W float32: integers scaled by their type's maximum (uint8: / 255), floats as given."""
    scale = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
    t = torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8) if x.dtype == bool else x)).to(torch.float32)
    return (t / scale if scale != 1.0 else t).permute(0, 3, 1, 2).contiguous()


def _finish(name: str, source: str, text: str, arrays: dict[str, np.ndarray],
            names: dict[int, str] | None) -> Dataset:
    """Check the four arrays, map the labels to classes 0..K-1 (in sorted order; `names` names them, else
    their values do) and standardise the images with the training set's per-channel statistics."""
    x_train, x_test = (_check_images(k, np.asarray(arrays[k]), text) for k in ("x_train", "x_test"))
    y_train = _check_labels("y_train", np.asarray(arrays["y_train"]), len(x_train), text)
    y_test = _check_labels("y_test", np.asarray(arrays["y_test"]), len(x_test), text)
    if x_test.shape[1:] != x_train.shape[1:]:
        raise SearchInputError(f"--data {text}: x_test's images are {_shape(x_test)} but x_train's {_shape(x_train)}")
    seen = np.unique(y_train)
    if len(seen) < 2:
        raise SearchInputError(f"--data {text}: one class only (label {seen[0]}) in y_train; "
                               f"a classifier needs at least two")
    values = np.union1d(seen, y_test)
    digest = hashlib.sha1()
    for a in (x_train, y_train, x_test, y_test):
        digest.update(str((a.dtype.str, a.shape)).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    train, test = _as_unit_float(x_train), _as_unit_float(x_test)
    std, mean = torch.std_mean(train, dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(values, y).astype(np.int64))

    classes = tuple((names or {}).get(int(v), str(v)) for v in values)
    return Dataset(name=name, source=source, x_train=(train - mean) / std, y_train=labels(y_train),
                   x_test=(test - mean) / std, y_test=labels(y_test), classes=classes,
                   digest=digest.hexdigest()[:16])


def _shape(x: np.ndarray) -> str:
    return "x".join(str(d) for d in x.shape[1:])


__all__ = ["ARRAYS", "Dataset", "FASHION_MNIST", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "load_data", "read_idx"]
