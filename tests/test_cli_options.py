"""Every option of every `torchnf` command is validated, as one line, before any work."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from torchnf import cli
from torchnf.cli import train

#: Positional arguments each command needs before an option can be tested (never opened:
#: parsing stops at the bad option).
REQUIRED = {
    "train": [],
    "vi": ["--target", "u1"],
    "sample": ["no-run", "-o", "samples.npy"],
    "evaluate": ["no-run", "--data", "moons"],
    "check": [],
    "bench": [],
    "trace": ["no-run"],
}

#: (command, option, bad value(s)): each must be refused while parsing.
BAD = [
    ("train", "--steps", ["0"]),
    ("train", "--steps", ["-1"]),
    ("train", "--steps", ["1.5"]),
    ("train", "--batch-size", ["0"]),
    ("train", "--lr", ["0"]),
    ("train", "--lr", ["-1e-3"]),
    ("train", "--lr", ["nan"]),
    ("train", "--lr", ["inf"]),
    ("train", "--clip-grad", ["0"]),
    ("train", "--clip-grad", ["-5"]),
    ("train", "--clip-grad", ["nan"]),
    ("train", "--clip-grad", ["inf"]),
    ("train", "--n-layers", ["0"]),
    ("train", "--hidden-sizes", ["0"]),
    ("train", "--hidden-sizes", ["64", "-1"]),
    ("train", "--n-levels", ["0"]),
    ("train", "--n-steps", ["0"]),
    ("train", "--hidden-channels", ["0"]),
    ("train", "--val-fraction", ["1"]),
    ("train", "--val-fraction", ["-0.1"]),
    ("train", "--val-fraction", ["nan"]),
    ("train", "--n-points", ["0"]),
    ("train", "--threads", ["0"]),
    ("train", "--log-every", ["0"]),
    ("train", "--checkpoint-every", ["0"]),
    ("train", "--checkpoint-minutes", ["0"]),
    ("train", "--checkpoint-minutes", ["-1"]),
    ("train", "--checkpoint-minutes", ["nan"]),
    ("train", "--patience", ["0"]),
    ("train", "--patience", ["-2"]),
    ("train", "--seed", ["-1"]),
    ("train", "--seed", ["x"]),
    ("train", "--data", [""]),
    ("train", "--model", [" "]),
    ("train", "--out", [""]),
    ("train", "--name", [""]),
    ("train", "--compile", ["fast"]),
    ("train", "--conditioner-dtype", ["float64"]),
    ("train", "--context", [""]),
    ("train", "--bounds", ["1:0"]),
    ("train", "--bounds", ["0:1:2"]),
    ("train", "--bounds", ["0"]),
    ("train", "--bounds", ["a:1"]),
    ("train", "--bounds", ["0:inf"]),
    ("train", "--bounds", ["nan:"]),
    ("train", "--bounds", ["0:1,"]),
    ("train", "--circular", ["-1"]),
    ("train", "--circular", ["0.5"]),
    ("train", "--discrete-columns", ["-1"]),
    ("train", "--discrete-columns", ["x"]),
    ("train", "--categorical-columns", ["1.5"]),
    ("train", "--dequantizer", ["argmax"]),
    ("train", "--objective", ["kl"]),
    ("train", "--objective", [""]),
    ("sample", "--n-samples", ["0"]),
    ("sample", "-n", ["-3"]),
    ("sample", "--temperature", ["0"]),
    ("sample", "--temperature", ["-1"]),
    ("sample", "--temperature", ["inf"]),
    ("sample", "--batch-size", ["0"]),
    ("sample", "--seed", ["-1"]),
    ("sample", "--output", [""]),
    ("sample", "--context", [""]),
    ("evaluate", "--n-points", ["0"]),
    ("evaluate", "--seed", ["-1"]),
    ("evaluate", "--data", [""]),
    ("evaluate", "--iw-samples", ["0"]),
    ("check", "--atol", ["0"]),
    ("check", "--atol", ["nan"]),
    ("check", "--perturb", ["-0.1"]),
    ("check", "--perturb", ["inf"]),
    ("check", "--seed", ["-1"]),
    ("check", "--kind", ["flow"]),
    ("bench", "--steps", ["0"]),
    ("bench", "--n-points", ["0"]),
    ("bench", "--n-eval", ["1"]),
    ("bench", "--batch-size", ["0"]),
    ("bench", "--lr", ["0"]),
    ("bench", "--lr", ["nan"]),
    ("bench", "--n-layers", ["0"]),
    ("bench", "--hidden-sizes", ["0"]),
    ("bench", "--threads", ["0"]),
    ("bench", "--seed", ["-1"]),
    ("bench", "--models", [""]),
    ("bench", "--targets", [""]),
    ("bench", "--out", [""]),
    ("bench", "--objective", ["mle"]),
    ("trace", "--n-samples", ["1"]),
    ("trace", "-n", ["0"]),
    ("trace", "--seed", ["-1"]),
    ("trace", "--target", [""]),
    ("trace", "--output", [""]),
    ("evaluate", "--importance", ["1"]),
    ("evaluate", "--target", [""]),
    ("vi", "--target", [""]),
    ("vi", "--dim", ["0"]),
    ("vi", "--anneal-steps", ["0"]),
    ("vi", "--importance", ["1"]),
]

#: Options taking free text, checked where they are used (one line, exit status 1).
FREE_TEXT = {("sample", "run"), ("evaluate", "run"), ("trace", "run"), ("check", "names")}
FREE_TEXT |= {(command, "device") for command in ("train", "vi", "sample", "evaluate")}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


#: vi shares train's model and fit options (cli/training.py): the same bad values are refused.
BAD += [
    ("vi", option, values)
    for command, option, values in list(BAD)
    if command == "train" and option in _subparsers()["vi"]._option_string_actions
]


def _valued_options() -> list[tuple[str, argparse.Action]]:
    """Every (command, action) that takes a value, but free text."""
    return [
        (command, action)
        for command, sub in _subparsers().items()
        for action in sub._actions
        if action.nargs != 0 and action.dest != "help" and (command, action.dest) not in FREE_TEXT
    ]


def _id(command: str, action: argparse.Action) -> str:
    return f"{command}-{action.option_strings[-1] if action.option_strings else action.dest}"


VALUED = _valued_options()


@pytest.mark.parametrize(
    ("command", "option", "values"),
    BAD,
    ids=[f"{c}{o}={'_'.join(v) or 'empty'}" for c, o, v in BAD],
)
def test_bad_value_is_one_line_naming_the_option(capsys, command, option, values) -> None:
    status = cli.main([command, *REQUIRED[command], option, *values])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"torchnf {command}: error: argument "), err
    assert option in err and ("expected" in err or "invalid choice" in err), err


@pytest.mark.parametrize(("command", "action"), VALUED, ids=[_id(c, a) for c, a in VALUED])
def test_every_option_has_a_validating_type(command, action) -> None:
    assert action.type is not None or action.choices is not None
    tested = {(c, o) for c, o, _ in BAD}
    assert any((command, o) in tested for o in action.option_strings), "no bad value tested"


@pytest.mark.parametrize(
    ("argv", "dest", "expected"),
    [
        (["train", "--clip-grad", "none"], "clip_grad", None),
        (["train", "--clip-grad", "None"], "clip_grad", None),
        (["train", "--clip-grad", "0.5"], "clip_grad", 0.5),
        (["train", "--val-fraction", "0"], "val_fraction", 0.0),
        (["train", "--hidden-sizes", "8", "4"], "hidden_sizes", [8, 4]),
        (["train", "--seed", "0"], "seed", 0),
        (
            ["train", "--bounds", "0:1", "0:", ":", ":5"],
            "bounds",
            [[[0, 1]], [[0, None]], [None], [[None, 5]]],
        ),
        (["train", "--bounds=-1:1,0:"], "bounds", [[[-1, 1], [0, None]]]),
        (["check", "--perturb", "0"], "perturb", 0.0),
        (["bench", "--n-eval", "2"], "n_eval", 2),
        (["sample", "r", "-o", "s.npy", "--temperature", "1e-3"], "temperature", 1e-3),
    ],
    ids=[
        "clip-none",
        "clip-None",
        "clip-half",
        "no-validation",
        "hidden-sizes",
        "seed-0",
        "bounds-per-token",
        "bounds-comma-negative",
        "no-perturbation",
        "two-eval-samples",
        "small-temperature",
    ],
)
def test_edge_values_are_accepted(argv, dest, expected) -> None:
    assert getattr(cli.build_parser().parse_args(argv), dest) == expected


def _later_errors(tmp: str) -> dict[str, list[str]]:
    out = ["--out", f"{tmp}/out", "--no-plots", "--quiet", "--steps", "1"]
    return {
        "batch-over-points": ["train", "--n-points", "10", "--batch-size", "64", *out],
        "model-not-buildable": ["train", "--data", "mixture1d", "--model", "RealNVP", *out],
        "bench-layer": ["bench", "--models", "Reverse", "--out", f"{tmp}/out"],
        "bench-unknown-target": ["bench", "--targets", "nope", "--out", f"{tmp}/out"],
        "bench-batch-over-points": ["bench", "--n-points", "100", "--out", f"{tmp}/out"],
        "trace-output": ["trace", f"{tmp}/no-run", "-o", f"{tmp}/out/trace.txt"],
        "trace-target": ["trace", f"{tmp}/no-run", "--target", "nope"],
        "bounds-model": ["train", "--data", "moons", "--model", "Glow", "--bounds", ":", ":", *out],
        "bounds-length": ["train", "--data", "moons", "--model", "NICE", "--bounds", "0:1", *out],
        "bounds-data": ["train", "--data", "moons", "--model", "NICE", "--bounds", "0:", ":", *out],
        "objective-model": ["train", "--model", "NSF", "--objective", "flow_matching", *out],
        "ot-objective": ["train", "--model", "CNF", "--ot", *out],
        "circular-model": ["train", "--data", "moons", "--model", "NICE", "--circular", "0", *out],
        "circular-column": ["train", "--model", "CircularNSF", "--circular", "2", *out],
        "circular-data": ["train", "--data", "banana", "--model", "CircularNSF", "--circular", "0"]
        + out,
    }


LATER = {
    "batch-over-points": "expected --batch-size at most the 9 training points",
    "model-not-buildable": r"cannot build RealNVP for data of shape (1,): ",
    "bench-layer": "Reverse is a layer, not a model",
    "bench-unknown-target": "unknown data set 'nope'",
    "bench-batch-over-points": "expected --batch-size at most the 90 training points",
    "trace-output": "trace.txt: expected a .png output file",
    "trace-target": "unknown target 'nope'",
    "bounds-model": "--bounds: Glow takes no bounds; use one of [",
    "bounds-length": "expected one bound per dimension, 2 (input_size), got 1",
    "bounds-data": "is on or outside the bounds [(0.0, None), (None, None)]; expected every",
    "objective-model": "--objective flow_matching trains the vector field of a continuous flow",
    "ot-objective": "--ot pairs data and noise for --objective flow_matching",
    "circular-model": "--circular: NICE takes no angle columns; use one of ['CircularNSF']",
    "circular-column": "expected circular as distinct column indices in [0, 2), got [2]",
    "circular-data": "column 0 is an angle but row 0 holds -4.62",
}


@pytest.mark.parametrize("case", list(LATER))
def test_errors_found_later_are_one_line_before_any_work(tmp_path, capsys, case) -> None:
    argv = _later_errors(str(tmp_path))[case]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"torchnf {argv[0]}: error: "), err
    assert LATER[case] in err, err
    assert not (tmp_path / "out").exists()  # nothing written, nothing trained


def test_an_unexpected_error_is_one_line(monkeypatch, capsys) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("boom\n  second line")

    monkeypatch.setattr(train, "_train", fail)
    assert cli.main(["train", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("torchnf train: error: RuntimeError: boom second line (")


def test_a_bad_option_from_the_console_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "torchnf", "train", "--clip-grad", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    expected = "torchnf train: error: argument --clip-grad: expected a positive number or 'none'"
    assert result.stderr == f"{expected}, got 0\n"
