"""Loading user data from .npy/.csv files, and the data checks at the library's entry points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchnf.data.loaders import check_data, load_array, save_array


@pytest.mark.parametrize("suffix", [".npy", ".csv"], ids=["npy", "csv"])
def test_round_trip(tmp_path, suffix):
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    save_array(x, tmp_path / f"points{suffix}")
    loaded = load_array(tmp_path / f"points{suffix}", dtype=torch.float64)
    assert loaded.shape == (7, 3) and loaded.dtype == torch.float64
    torch.testing.assert_close(loaded, x.double(), rtol=1e-7, atol=1e-7)


def test_csv_with_header_and_blank_lines(tmp_path):
    (tmp_path / "d.csv").write_text("x,y\n1,2\n\n3,4\n")
    assert load_array(tmp_path / "d.csv").tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_one_dimensional_npy_becomes_a_column(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(5))
    x = load_array(tmp_path / "d.npy")
    assert x.shape == (5, 1) and x.dtype == torch.float32


BAD_FILES = {
    "unknown-suffix": ("d.txt", b"1,2\n", ValueError, "expected a .npy or .csv"),
    "non-numeric-cell": ("d.csv", b"1,2\n3,abc\n", ValueError, "line 2, column 1"),
    "ragged-rows": ("d.csv", b"1,2\n3\n", ValueError, "line 2 has 1 columns, expected 2"),
    "empty-csv": ("d.csv", b"a,b\n", ValueError, "no data rows"),
    "binary-csv": ("d.csv", b"\xff\xfe\x00\x81", ValueError, "not a text .csv"),
    "nan-in-csv": ("d.csv", b"1,2\n3,nan\n", ValueError, "found NaN at row 1"),
    "inf-in-csv": ("d.csv", b"1,2\n-inf,0\n", ValueError, "found -inf at row 1"),
    "corrupt-npy": ("d.npy", b"not an npy file", ValueError, "not a readable .npy"),
}


@pytest.mark.parametrize("case", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_file_gives_a_clear_error_naming_it(tmp_path, case):
    name, content, error, message = case
    (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=message) as info:
        load_array(tmp_path / name)
    assert name in str(info.value)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array(["a", "b"]), "expected a numeric array"),
        (np.array([[1.0, np.inf]]), "found inf at row 0"),
        (np.zeros((0, 2)), r"expected an array of shape \(N, ...\)"),
        (np.array(3.0), r"expected an array of shape \(N, ...\)"),
    ],
    ids=["strings", "inf", "empty", "scalar"],
)
def test_bad_npy_content(tmp_path, array, message):
    np.save(tmp_path / "d.npy", array)
    with pytest.raises(ValueError, match=message):
        load_array(tmp_path / "d.npy")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy: no such data file"):
        load_array(tmp_path / "missing.npy")


def test_check_data_names_the_first_non_finite_row():
    x = torch.zeros(30, 2)
    x[17, 1] = float("nan")
    x[20, 0] = float("inf")
    with pytest.raises(ValueError, match=r"expected finite data, found NaN at row 17 \(column 1\)"):
        check_data(x, (2,))


@pytest.mark.parametrize(
    "x, event_shape, message",
    [
        (torch.zeros(4, 2, dtype=torch.long), (2,), "expected floating-point data, got dtype"),
        (torch.zeros(4, 3), (2,), r"expected data of shape \(N, 2\), got \(4, 3\)"),
        (torch.zeros(4), (2,), r"expected data of shape \(N, 2\), got \(4,\)"),
        (torch.zeros(0, 2), (2,), "expected at least one row"),
        (np.zeros((4, 2)), (2,), "expected data to be a torch.Tensor"),
    ],
    ids=["integer", "wrong-size", "no-event-dim", "empty", "numpy"],
)
def test_check_data_refuses(x, event_shape, message):
    with pytest.raises(ValueError, match=message):
        check_data(x, event_shape)


def test_save_array_refuses_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="expected a .npy or .csv output file"):
        save_array(torch.zeros(2, 2), tmp_path / "out.txt")
