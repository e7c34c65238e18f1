"""Every command that reads a run refuses a ``config.json`` edited into nonsense (any field,
any type) in one line, or works when the edit happens to be harmless: never a traceback."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchnf import cli

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70) | st.floats(-1e3, 1e3) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(1)
    argv = ["train", "--data", "moons", "--model", "RealNVP", "--n-points", "600", "--steps", "4"]
    argv += ["--n-layers", "2", "--hidden-sizes", "8", "--batch-size", "64", "--log-every", "2"]
    assert cli.main([*argv, "--no-plots", "--quiet", "--out", str(out), "--name", "run"]) == 0
    return out / "run"


def _paths(value, prefix=()):
    """Every path to a field of a JSON value (dict keys and list indices), the value's own too."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(config, path, value):
    if not path:
        return value
    edited = copy.deepcopy(config)
    parent = edited
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return edited


COMMANDS = {
    "sample": lambda run, tmp: ["sample", str(run), "-n", "5", "-o", str(tmp / "s.npy")],
    "evaluate": lambda run, tmp: ["evaluate", str(run), "--data", "moons", "--n-points", "50"],
    "trace": lambda run, tmp: ["trace", str(run), "-n", "50"],
    "resume": lambda run, tmp: [
        "train",
        "--data",
        "moons",
        "--model",
        "RealNVP",
        "--n-points",
        "600",
        "--steps",
        "6",
        "--n-layers",
        "2",
        "--hidden-sizes",
        "8",
        "--batch-size",
        "64",
        "--no-plots",
        "--quiet",
        "--out",
        str(run.parent),
        "--name",
        run.name,
        "--resume",
    ],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_an_edited_config_is_refused_in_one_line(trained, tmp_path, capsys, command, data):
    run = tmp_path / "edited"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(trained, run)
    config = json.loads((run / "config.json").read_text())
    path = data.draw(st.sampled_from(sorted(_paths(config), key=str)), label="field")
    value = data.draw(JSON, label="value")
    (run / "config.json").write_text(json.dumps(_replace(config, path, value)))
    capsys.readouterr()
    status = cli.main(COMMANDS[command](run, tmp_path))
    err = capsys.readouterr().err.strip()
    if status != 0:
        assert len(err.splitlines()) == 1, err
        assert err.startswith("torchnf ") and ": error: " in err, err
        # A refusal names what is wrong; the command's last-resort line for a bug ends with
        # the file and line where it happened.
        assert not re.search(r"\(\w+\.py:\d+\)$", err), err
