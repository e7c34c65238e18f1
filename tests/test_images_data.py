"""Image data: the built-in digits split and the MNIST loaders on small files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchnf.data.images import DIGITS_TEST_SIZE, load_digits, load_mnist, read_idx

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    code = IDX_CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def images(n: int = 5, h: int = 4, w: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w)).astype(np.uint8)


# -- digits -----------------------------------------------------------------------------


def test_digits_split_is_fixed_disjoint_and_complete() -> None:
    train, y_train = load_digits("train", labels=True)
    test, y_test = load_digits("test", labels=True)
    everything = load_digits("all")
    assert train.shape == (1797 - DIGITS_TEST_SIZE, 1, 8, 8)
    assert test.shape == (DIGITS_TEST_SIZE, 1, 8, 8) and y_test.shape == (DIGITS_TEST_SIZE,)
    assert torch.equal(load_digits("test"), test)  # the same split every call
    rows = {tuple(r.tolist()) for r in everything.flatten(1)}
    assert {tuple(r.tolist()) for r in torch.cat([train, test]).flatten(1)} == rows
    assert set(y_train.tolist()) == set(range(10))


def test_digits_are_discrete_in_0_16() -> None:
    x = load_digits("all")
    assert x.dtype == torch.float32
    assert torch.equal(x, x.round()) and x.min() == 0 and x.max() == 16


def test_digits_bad_split_is_refused() -> None:
    with pytest.raises(ValueError, match="expected split"):
        load_digits("validation")


# -- IDX --------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trips_images(tmp_path: Path, compress: bool) -> None:
    array = images()
    path = write_idx(tmp_path / "images", array, compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and np.array_equal(out, array)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    dtype=st.sampled_from(list(IDX_CODES)),
    compress=st.booleans(),
)
def test_read_idx_round_trips_any_type_and_shape(tmp_path_factory, shape, dtype, compress) -> None:
    array = (np.arange(np.prod(shape)).reshape(shape) % 100 - 50 * (dtype != np.uint8)).astype(
        dtype
    )
    path = write_idx(tmp_path_factory.mktemp("idx") / "a.idx", array, compress)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, array)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x08\x03\x00\x00", "expected an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x01\x02", "expected 10 bytes"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (b"", "expected an IDX file"),
    ],
    ids=["bad-magic", "short-header", "truncated-data", "corrupt-gzip", "empty"],
)
def test_read_idx_refuses_corrupt_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        read_idx(tmp_path / "nothing")


# -- MNIST ------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_load_mnist_from_idx_file(tmp_path: Path, compress: bool) -> None:
    array = images()
    x = load_mnist(write_idx(tmp_path / "train-images-idx3-ubyte", array, compress))
    assert x.shape == (5, 1, 4, 3) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.as_tensor(array, dtype=torch.float32))


@pytest.mark.parametrize(
    ("name", "compress"),
    [("-images-idx3-ubyte", False), ("-images-idx3-ubyte.gz", True)],
    ids=["raw", "gzip"],
)
def test_load_mnist_from_directory_by_split(tmp_path: Path, name: str, compress: bool) -> None:
    write_idx(tmp_path / f"train{name}", images(5, seed=0), compress)
    write_idx(tmp_path / f"t10k{name}", images(2, seed=1), compress)
    assert load_mnist(tmp_path, "train").shape[0] == 5
    assert torch.equal(
        load_mnist(tmp_path, "test")[:, 0], torch.as_tensor(images(2, seed=1)).float()
    )


def test_load_mnist_from_keras_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", x_train=images(4), x_test=images(3), y_train=np.arange(4))
    assert load_mnist(tmp_path / "mnist.npz", "test").shape == (3, 1, 4, 3)
    assert load_mnist(tmp_path, "train").shape == (4, 1, 4, 3)  # found in the directory


def test_load_mnist_from_single_array_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", images(6)[:, None])
    assert load_mnist(tmp_path / "digits.npz").shape == (6, 1, 4, 3)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"a": images(), "b": images()}, "expected an array 'x_train'"),
        ({"x_train": images().astype(np.int16) + 300}, "values in 0..255"),
        ({"x_train": np.zeros((2, 3))}, "expected images of shape"),
        ({"x_train": np.full((2, 3, 3), 0.5)}, "integer pixel values"),
    ],
    ids=["no-key", "out-of-range", "not-images", "not-integer"],
)
def test_load_mnist_refuses_bad_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_mnist(tmp_path / "bad.npz")


def test_load_mnist_refuses_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_mnist(tmp_path / "bad.npz")


def test_load_mnist_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected one of"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such MNIST file"):
        load_mnist(tmp_path / "missing.idx")
    with pytest.raises(ValueError, match="expected split"):
        load_mnist(tmp_path, "all")


# -- the command on image data ----------------------------------------------------------------


def test_command_trains_samples_and_evaluates_on_digits(tmp_path: Path, capsys) -> None:
    from torchnf.cli import main

    run = tmp_path / "runs" / "digits-glow"
    train = ["train", "--data", "digits", "--model", "glow", "--steps", "2", "--n-points", "300"]
    sizes = ["--n-levels", "2", "--n-steps", "1", "--hidden-channels", "4"]
    assert main([*train, *sizes, "--out", str(tmp_path / "runs"), "--batch-size", "32"]) == 0
    assert "test bits/dim on digits" in capsys.readouterr().out
    assert (run / "samples.png").is_file()
    grid = tmp_path / "grid.png"
    assert main(["sample", str(run), "-n", "9", "-o", str(grid), "--temperature", "0.7"]) == 0
    assert grid.is_file()
    assert main(["evaluate", str(run), "--data", "digits"]) == 0
    assert "bits/dim over the 360 test images" in capsys.readouterr().out


def test_command_refuses_an_image_grid_of_vectors(tmp_path: Path, capsys) -> None:
    from torchnf.cli import main

    out = str(tmp_path / "runs")
    assert main(["train", "--data", "moons", "--steps", "1", "--no-plots", "--out", out]) == 0
    run = next((tmp_path / "runs").iterdir())
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "x.png")]) == 1
    assert "needs an image run" in capsys.readouterr().err
