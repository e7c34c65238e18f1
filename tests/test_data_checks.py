"""Data larger than memory: memory-mapped .npy files, chunked checks, fingerprints, warnings."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from torchnf.data.loaders import (
    check_data,
    check_finite_chunked,
    data_warnings,
    dequantize_integers,
    fingerprint,
    open_npy,
)


def _npy(tmp_path, array, name="d.npy"):
    np.save(tmp_path / name, array)
    return tmp_path / name


def test_open_npy_maps_the_file_without_reading_it(tmp_path):
    array = open_npy(_npy(tmp_path, np.arange(12.0).reshape(4, 3)))
    assert isinstance(array, np.memmap) and array.shape == (4, 3) and not array.flags.writeable


def test_open_npy_gives_a_column_view_of_a_vector(tmp_path):
    array = open_npy(_npy(tmp_path, np.arange(5, dtype=np.int16)))
    assert array.shape == (5, 1) and isinstance(array.base, np.memmap)


BAD_NPY = {
    "strings": (np.array(["a", "b"]), "expected a numeric array, got dtype <U1"),
    "objects": (np.array([{}, 1], dtype=object), "not a readable .npy array"),
    "empty": (np.zeros((0, 2)), r"expected an array of shape \(N, ...\), got \(0, 2\)"),
    "scalar": (np.array(3.0), r"expected an array of shape \(N, ...\), got \(\)"),
}


@pytest.mark.parametrize("case", list(BAD_NPY.values()), ids=list(BAD_NPY))
def test_open_npy_refuses_bad_headers(tmp_path, case):
    array, message = case
    with pytest.raises(ValueError, match=message):
        open_npy(_npy(tmp_path, array))


def test_open_npy_refuses_an_npz_archive(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros(3))
    (tmp_path / "d.npz").rename(tmp_path / "d.npy")
    with pytest.raises(ValueError, match="d.npy: expected one array, got NpzFile"):
        open_npy(tmp_path / "d.npy")


def test_open_npy_refuses_a_truncated_file(tmp_path):
    path = _npy(tmp_path, np.zeros((100, 4)))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="d.npy: not a readable .npy array"):
        open_npy(path)


def test_open_npy_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy: no such data file"):
        open_npy(tmp_path / "missing.npy")


@pytest.mark.parametrize(
    "row, column, value, kind",
    [(997, 2, np.nan, "NaN"), (0, 0, np.inf, "inf"), (999, 3, -np.inf, "-inf")],
    ids=["nan-in-a-late-chunk", "inf-first", "-inf-last-row"],
)
def test_check_finite_chunked_names_the_first_non_finite_value(tmp_path, row, column, value, kind):
    array = np.zeros((1000, 4))
    array[row, column] = value
    array = open_npy(_npy(tmp_path, array))
    with pytest.raises(ValueError, match=rf"found {kind} at row {row} \(column {column}\)$"):
        check_finite_chunked(array, chunk_rows=10)


def test_check_finite_chunked_says_what_check_data_says():
    x = torch.zeros(6, 2, 2)
    x[4, 1, 0] = float("nan")
    with pytest.raises(ValueError) as chunked:
        check_finite_chunked(x.numpy(), "points", chunk_rows=4)
    with pytest.raises(ValueError) as whole:
        check_data(x, name="points")
    assert (
        str(chunked.value)
        == str(whole.value)
        == ("expected finite points, found NaN at row 4 (column 2)")
    )


def test_check_finite_chunked_passes_finite_and_integer_data(tmp_path):
    array = open_npy(_npy(tmp_path, np.arange(30, dtype=np.int32).reshape(10, 3)))
    assert check_finite_chunked(array, chunk_rows=3) is array


@pytest.mark.parametrize(
    "data, chunk_rows, message",
    [
        ([[1.0]], None, "expected data to be an array or tensor, got list"),
        (np.zeros((0, 3)), None, r"expected data of shape \(N, ...\) with N >= 1"),
        (np.array(["a"]), None, "expected numeric data, got dtype <U1"),
        (np.zeros((3, 2)), 0, "expected chunk_rows >= 1, got 0"),
    ],
    ids=["list", "empty", "strings", "zero-chunk"],
)
def test_streaming_functions_refuse_bad_input(data, chunk_rows, message):
    with pytest.raises(ValueError, match=message):
        check_finite_chunked(data, chunk_rows=chunk_rows)


def test_streaming_checks_run_in_bounded_memory(tmp_path):
    array = open_npy(_npy(tmp_path, np.ones((40_000, 32))))  # 10 MiB on disk
    tracemalloc.start()
    check_finite_chunked(array, chunk_rows=256)
    data_warnings(array, chunk_rows=256)
    fingerprint(array, chunk_rows=256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_fingerprint_is_stable_across_types_chunks_and_byte_order(tmp_path):
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = fingerprint(x)
    assert expected == fingerprint(x.clone())
    assert expected == fingerprint(open_npy(_npy(tmp_path, x.numpy())), chunk_rows=7)
    assert expected == fingerprint(x.numpy().astype(">f8"), chunk_rows=1)
    assert expected["shape"] == [50, 3] and expected["dtype"] == "float64"


def _nudge_last_value(x):
    x[-1, -1] += 1e-12
    return x


@pytest.mark.parametrize(
    "change",
    [
        _nudge_last_value,
        lambda x: x.reshape(75, 2),
        lambda x: x.float(),
        lambda x: x[:-1],
    ],
    ids=["one-value-in-the-last-row", "shape", "dtype", "one-row-fewer"],
)
def test_fingerprint_changes_with_the_data(change):
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = fingerprint(x, chunk_rows=8)
    assert fingerprint(change(x.clone()), chunk_rows=8) != before


def test_fingerprint_of_bfloat16_tensors():
    x = torch.randn(4, 2).bfloat16()
    assert fingerprint(x)["dtype"] == "bfloat16" and fingerprint(x) == fingerprint(x.clone())


CONSTANT = "column {} is constant (value {}): its density is degenerate; drop it"
INTEGERS = (
    "all values are integers: the data are discrete; pass --dequantize (or "
    "torchnf.data.loaders.dequantize_integers) to make them continuous"
)
WARNINGS = {
    "continuous": (torch.tensor([[0.5, 1.0], [1.5, 2.0]]), []),
    "constant": (torch.tensor([[0.5, 3.0], [1.5, 3.0]]), [CONSTANT.format(1, 3.0)]),
    "integers": (torch.tensor([[0.0, 1.0], [2.0, 5.0]]), [INTEGERS]),
    "integer-dtype": (
        np.array([[0, 7], [2, 7]], dtype=np.uint8),
        [CONSTANT.format(1, 7.0), INTEGERS],
    ),
    "constant-within-chunks": (torch.tensor([[0.5], [0.5], [0.5], [1.5]]), []),
    "nan-is-not-constant": (
        torch.tensor([[0.5, 1.0], [0.5, float("nan")]]),
        [CONSTANT.format(0, 0.5)],
    ),
    "one-row": (torch.tensor([[0.5]]), [CONSTANT.format(0, 0.5)]),
}


@pytest.mark.parametrize("case", list(WARNINGS.values()), ids=list(WARNINGS))
def test_data_warnings(case):
    data, expected = case
    assert data_warnings(data, chunk_rows=2) == expected


def test_data_warnings_sums_up_many_constant_columns(tmp_path):
    array = np.zeros((3, 4, 5)) + 0.5
    array[:, 0, 0] = [0.25, 1.5, 2.5]
    warnings = data_warnings(open_npy(_npy(tmp_path, array)), chunk_rows=2)
    assert warnings[0] == CONSTANT.format(1, 0.5) and len(warnings) == 11
    assert warnings[-1] == "9 more columns are constant (19 of 20 in all): drop them"


@pytest.mark.parametrize(
    "x",
    [torch.tensor([[0.0, 3.0], [-2.0, 1.0]]), torch.tensor([[0, 3], [-2, 1]])],
    ids=["float", "long"],
)
def test_dequantize_integers_adds_uniform_noise_in_the_unit_bin(x):
    v = dequantize_integers(x, torch.Generator().manual_seed(0))
    assert v.dtype == torch.float32 and torch.equal(v.floor(), x.float()) and bool((v > x).any())


def test_dequantize_integers_is_reproducible_and_keeps_float64():
    x = torch.arange(6.0, dtype=torch.float64).reshape(3, 2)
    a = dequantize_integers(x, torch.Generator().manual_seed(3))
    assert a.dtype == torch.float64
    assert torch.equal(a, dequantize_integers(x, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize(
    "x, message",
    [
        (
            torch.tensor([[0.0, 1.0], [2.0, 2.5]]),
            r"expected integer values to dequantize, found 2.5 at row 1 \(column 1\)",
        ),
        (
            torch.tensor([[0.0, float("inf")]]),
            r"expected finite x, found inf at row 0 \(column 1\)",
        ),
        (np.zeros((2, 2)), "expected x to be a torch.Tensor, got ndarray"),
    ],
    ids=["fraction", "inf", "numpy"],
)
def test_dequantize_integers_refuses(x, message):
    with pytest.raises(ValueError, match=message):
        dequantize_integers(x)
