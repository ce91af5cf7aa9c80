"""search.scoring.data: the three formats (.npz, class folders, Fashion-MNIST's IDX files), channels and sizes,
normalisation, and every bad input of issue 16 as one line naming it (exit 2 through the CLI)."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import search.scoring.data as data_module
from search.__main__ import main
from search.scoring.data import FASHION_MNIST_CLASSES, load_data
from search.space import SearchInputError


def write_npz(path: Path, x_train, y_train, x_test, y_test, **extra) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


def images(n: int, shape: tuple[int, ...], dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return rng.random((n, *shape)).astype(dtype)


def write_png(path: Path, size: tuple[int, int], mode: str, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, size, color).save(path)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


# --- .npz ------------------------------------------------------------------------------------------------------


def test_npz_grey_uint8_is_one_channel_standardised_and_labels_mapped(tmp_path):
    path = write_npz(tmp_path / "grey.npz", images(40, (20, 20)), np.repeat([3, 7], 20), images(10, (20, 20), seed=1),
                     np.repeat([7, 3], 5))
    d = load_data(path)
    assert (d.channels, d.height, d.width, d.num_classes) == (1, 20, 20, 2)
    assert d.x_train.dtype == torch.float32 and d.x_train.shape == (40, 1, 20, 20)
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-2
    assert d.classes == ("3", "7") and d.y_train.tolist() == [0] * 20 + [1] * 20 and d.y_test.tolist()[0] == 1
    assert d.name == "grey" and len(d.digest) == 16


def test_npz_channels_last_float_odd_size(tmp_path):
    x = images(30, (33, 33, 3), np.float32)
    path = write_npz(tmp_path / "rgb.npz", x, np.arange(30) % 3, images(6, (33, 33, 3), np.float32, 1),
                     np.arange(6) % 3)
    d = load_data(path)
    assert (d.channels, d.height, d.width, d.num_classes) == (3, 33, 33, 3)
    # Floats are taken as given and standardised per channel: the channel axis moved first.
    expected = (x[..., 1] - x[..., 1].mean()) / x[..., 1].std()
    assert np.allclose(d.x_train[:, 1].numpy(), expected, atol=1e-4)


def test_npz_float_labels_that_are_integral_are_accepted(tmp_path):
    path = write_npz(tmp_path / "f.npz", images(10, (8, 8)), np.array([0.0, 1.0] * 5), images(4, (8, 8)),
                     np.array([1.0, 0.0] * 2))
    assert load_data(path).num_classes == 2


def test_the_same_data_has_the_same_digest_and_other_data_another(tmp_path):
    a = write_npz(tmp_path / "a.npz", images(10, (8, 8)), np.arange(10) % 2, images(4, (8, 8)), np.arange(4) % 2)
    b = write_npz(tmp_path / "b.npz", images(10, (8, 8), seed=5), np.arange(10) % 2, images(4, (8, 8)),
                  np.arange(4) % 2)
    assert load_data(a).digest == load_data(a).digest != load_data(b).digest


# --- class folders ---------------------------------------------------------------------------------------------


def test_class_folders_rgb_with_mixed_sizes_and_a_held_out_fifth(tmp_path):
    root = tmp_path / "pets"
    for i in range(6):
        write_png(root / "cat" / f"{i}.png", (33, 33), "RGB", 10 * i)
        write_png(root / "dog" / f"{i}.jpg", (33, 33) if i else (20, 20), "RGB", 200 - 10 * i)
    (root / "dog" / "notes.txt").write_text("not an image")
    d = load_data(root)
    assert (d.channels, d.height, d.width) == (3, 33, 33)  # the 20x20 one resized to the most common size
    assert d.classes == ("cat", "dog") and d.name == "pets"
    assert len(d.y_train) == 10 and len(d.y_test) == 2  # each class's last fifth: one image of six
    assert sorted(d.y_test.tolist()) == [0, 1]


def test_class_folders_grey_train_test_layout(tmp_path):
    root = tmp_path / "digits"
    for split, n in (("train", 4), ("test", 2)):
        for label in ("a", "b", "c"):
            for i in range(n):
                write_png(root / split / label / f"{i}.png", (20, 20), "L", 40 * i)
    d = load_data(root)
    assert (d.channels, d.height, d.width, d.num_classes) == (1, 20, 20, 3)
    assert (len(d.y_train), len(d.y_test)) == (12, 6)


# --- Fashion-MNIST -----------------------------------------------------------------------------------------------


def test_fashion_mnist_idx_files_in_a_directory_the_user_names(tmp_path):
    rng = np.random.default_rng(0)
    for stem, array in (("train-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28))),
                        ("train-labels-idx1-ubyte", np.arange(12) % 10),
                        ("t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28))),
                        ("t10k-labels-idx1-ubyte", np.arange(5))):
        write_idx(tmp_path / f"{stem}.gz", array)
    d = load_data(tmp_path)
    assert (d.channels, d.height, d.width, len(d.y_train), len(d.y_test)) == (1, 28, 28, 12, 5)
    assert d.classes == FASHION_MNIST_CLASSES and d.name == "fashion-mnist" and d.source == str(tmp_path)
    assert len(load_data(tmp_path, limit=3).y_train) == 3


@pytest.mark.skipif(not (data_module.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package_reads_only_a_few_images():
    d = load_data("fashion-mnist", limit=50)
    assert (d.channels, d.height, d.width, len(d.y_train), len(d.y_test)) == (1, 28, 28, 50, 50)
    assert d.name == "fashion-mnist" and set(d.classes) <= set(FASHION_MNIST_CLASSES)
    assert d.y_train[:3].tolist() == [9, 0, 0]  # Ankle boot, T-shirt/top, T-shirt/top: the published first labels


def test_fashion_mnist_absent_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(SearchInputError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")


# --- bad input -----------------------------------------------------------------------------------------------------


def _bad_npz(tmp_path: Path, case: str) -> Path:
    x, y = images(10, (8, 8)), np.arange(10) % 2
    arrays = {
        "missing": dict(x_train=x, y_train=y),
        "lengths": dict(x_train=x, y_train=y[:7], x_test=x, y_test=y),
        "float_labels": dict(x_train=x, y_train=y + 0.5, x_test=x, y_test=y),
        "string_labels": dict(x_train=x, y_train=np.array(["a", "b"] * 5), x_test=x, y_test=y),
        "one_class": dict(x_train=x, y_train=np.zeros(10, int), x_test=x, y_test=y),
        "nan": dict(x_train=np.full((10, 8, 8), np.nan), y_train=y, x_test=x, y_test=y),
        "shapes": dict(x_train=x, y_train=y, x_test=images(10, (9, 9)), y_test=y),
        "channels_first": dict(x_train=images(10, (3, 8, 8)), y_train=y, x_test=images(10, (3, 8, 8)), y_test=y),
        "ndim": dict(x_train=np.zeros((10, 64)), y_train=y, x_test=x, y_test=y),
    }[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    return path


BAD_NPZ = {  # case: what the one line must name
    "missing": "missing array(s) x_test, y_test",
    "lengths": "x_train has 10 images but y_train has 7 labels",
    "float_labels": "y_train: labels must be integers (found 0.5)",
    "string_labels": "y_train: labels must be integers",
    "one_class": "one class only",
    "nan": "x_train holds NaN",
    "shapes": "x_test's images are 9x9x1 but x_train's 8x8x1",
    "channels_first": "N x C x H x W",
    "ndim": "x_train has shape [10, 64]",
}


def _bad_input(tmp_path: Path, case: str) -> tuple[str, str]:
    """(--data SPEC, what the error must say)."""
    if case in BAD_NPZ:
        return str(_bad_npz(tmp_path, case)), BAD_NPZ[case]
    if case == "empty_class":
        write_png(tmp_path / "f" / "cat" / "0.png", (8, 8), "L", 1)
        (tmp_path / "f" / "dog").mkdir()
        return str(tmp_path / "f"), "class folder 'dog' holds no images"
    if case == "one_class_folder":
        for i in range(5):
            write_png(tmp_path / "g" / "cat" / f"{i}.png", (8, 8), "L", i)
        return str(tmp_path / "g"), "one class only"
    if case == "no_classes":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty"), "no class subfolders"
    if case == "broken_image":
        write_png(tmp_path / "h" / "cat" / "0.png", (8, 8), "L", 1)
        (tmp_path / "h" / "dog").mkdir()
        (tmp_path / "h" / "dog" / "0.png").write_bytes(b"not a png")
        return str(tmp_path / "h"), "cannot read image dog/0.png"
    if case == "not_npz":
        (tmp_path / "x.npz").write_text("hello")
        return str(tmp_path / "x.npz"), "not a readable .npz file"
    if case == "csv":
        (tmp_path / "x.csv").write_text("1,2")
        return str(tmp_path / "x.csv"), "not a data set"
    assert case == "absent"
    return str(tmp_path / "nope.npz"), "no such file or directory"


BAD_CASES = [*BAD_NPZ, "empty_class", "one_class_folder", "no_classes", "broken_image", "not_npz", "csv", "absent"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_data_is_one_line_naming_what_is_wrong(tmp_path, case):
    spec, expected = _bad_input(tmp_path, case)
    with pytest.raises(SearchInputError) as info:
        load_data(spec)
    message = str(info.value)
    assert expected in message and message.startswith("--data") and "\n" not in message


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("case", ["missing", "lengths", "float_labels", "one_class", "empty_class"])
def test_bad_data_through_the_cli_exits_2_with_one_line(tmp_path, case, capsys):
    spec, expected = _bad_input(tmp_path, case)
    assert main(["--budget-ms", "10", "--objective", "accuracy", "--data", spec]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("search: error: --data") and expected in line


@pytest.mark.parametrize("argv,expected", [
    (["--objective", "accuracy", "--data", "fashion-mnist", "--epochs", "0"], "--epochs: 0 must be >= 1"),
    (["--objective", "accuracy"], "--objective accuracy: needs --data"),
    (["--objective", "naswot", "--data", "fashion-mnist"], "--data: used only with --objective accuracy"),
    (["--objective", "accuracy", "--data", "fashion-mnist", "--pruner", "median"], "--pruner"),
    (["--objective", "accuracy", "--data", "fashion-mnist", "--pareto", "--pruner", "hyperband"],
     "cannot prune a two-objective"),
])
def test_bad_training_flags_exit_2_with_one_line(argv, expected, capsys):
    try:
        code = main(["--budget-ms", "10", *argv])
    except SystemExit as e:  # argparse's own checks (a number, a choice) exit while parsing
        code = e.code
    assert code == 2
    assert expected in _one_line(capsys.readouterr().err)
