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


GOOD_CSV = {
    "header-and-blank-lines": ("x,y\n1,2\n\n3,4\n", [[1.0, 2.0], [3.0, 4.0]]),
    "quoted-header": ('"x", "y"\n1, 2\n', [[1.0, 2.0]]),
    "semicolons": ("x;y\n1;2.5\n", [[1.0, 2.5]]),
    "tabs": ("1\t2\n3\t4\n", [[1.0, 2.0], [3.0, 4.0]]),
    "spaces": ("  1   2\n3 \t 4\n", [[1.0, 2.0], [3.0, 4.0]]),
    "one-column": ("value\n1\n-2e3\n", [[1.0], [-2000.0]]),
    "crlf-and-bom": ("\ufeffa,b\r\n1,2\r\n", [[1.0, 2.0]]),
    "leading-blank-lines": ("\n\n1,2\n", [[1.0, 2.0]]),
}


@pytest.mark.parametrize("case", list(GOOD_CSV.values()), ids=list(GOOD_CSV))
def test_csv_delimiters_headers_and_blank_lines(tmp_path, case):
    text, expected = case
    (tmp_path / "d.csv").write_text(text, newline="")
    assert load_array(tmp_path / "d.csv").tolist() == expected


def test_one_dimensional_npy_becomes_a_column(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(5))
    x = load_array(tmp_path / "d.npy")
    assert x.shape == (5, 1) and x.dtype == torch.float32


BAD_FILES = {
    "unknown-suffix": ("d.txt", b"1,2\n", ValueError, "expected a .npy or .csv"),
    "non-numeric-cell": ("d.csv", b"1,2\n3,abc\n", ValueError, "line 2, column 1"),
    "ragged-rows": ("d.csv", b"1,2\n3\n", ValueError, "line 2 has 1 columns, expected 2"),
    "empty-csv": ("d.csv", b"a,b\n", ValueError, "no data rows"),
    "only-blank-lines": ("d.csv", b"\n \n", ValueError, "no data rows"),
    "binary-csv": ("d.csv", b"\xff\xfe\x00\x81", ValueError, "not a text .csv"),
    "nan-in-csv": ("d.csv", b"1,2\n3,nan\n", ValueError, "line 2, column 1: .* finite .* 'nan'"),
    "inf-in-csv": ("d.csv", b"1,2\n-inf,0\n", ValueError, "line 2, column 0: .* '-inf'"),
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


BAD_CSV = {
    "mixed-first-line": ("1,abc\n2,3\n", r"line 1, column 1: expected a number, got 'abc'"),
    "mixed-header": ("x,2\n1,2\n", r"line 1, column 0: expected a number, got 'x'"),
    "row-after-header": ("x,y\n1,\n", r"line 2, column 1: expected a number, got ''"),
    "header-wider-than-rows": ("x,y,z\n1,2\n", "line 2 has 2 columns, expected 3"),
    "blank-lines-keep-numbers": ("1,2\n\n3,b\n", "line 3, column 1"),
    "ragged-spaces": ("1 2\n3 4 5\n", "line 2 has 3 columns, expected 2"),
    "unknown-separator": ("a|b\n1|2\n", r"line 2, column 0: .*'1\|2' \(one column found"),
    "mixed-first-line-separators": ("1;2\t3\n", "line 1: found semicolons and tabs; expected"),
    "mixed-separators": ("1,2\n3;4\n", "line 2: found semicolons, but line 1 is .* commas"),
    "comma-in-space-file": ("1 2\n3,4\n", "line 2: found commas, but line 1 is .* spaces"),
    "decimal-comma": ("1,5;2,5\n", r"line 1: .*'1,5' looks like a decimal comma.*'1\.5'"),
    "decimal-comma-after-header": ("x;y\n1,5;2\n", "line 2: .*'1,5' looks like a decimal"),
    "decimal-comma-spaces": ("1,5 2,5\n", r"line 1, column 1: .*'5 2'.*decimal comma"),
}


@pytest.mark.parametrize("case", list(BAD_CSV.values()), ids=list(BAD_CSV))
def test_bad_csv_names_line_column_and_value(tmp_path, case):
    text, message = case
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_array(tmp_path / "d.csv")
    assert str(info.value).startswith(str(tmp_path / "d.csv")) and "\n" not in str(info.value)


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
