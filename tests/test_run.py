"""Run folders and the training core: never overwritten silently, resumed only when the model
and data match, checkpoints as one unit on a cadence and on signals, metrics without repeated
steps, files with the user's umask, early stopping, every kind of data source."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import torchnf
from torchnf.data import get_target
from torchnf.models import RealNVP
from torchnf.train import Hook, Interrupted
from torchnf.train.checkpoint import load_training_state
from torchnf.train.hooks import EarlyStopping, LearningRateSchedule

OPTIONS = dict(lr=3e-3, lr_schedule="constant", progress=False, log_every=5, seed=3)


@pytest.fixture(scope="module")
def moons() -> torch.Tensor:
    return get_target("moons").sample(2000, seed=0)


def small_flow(seed: int = 0, n_layers: int = 2) -> RealNVP:
    torch.manual_seed(seed)
    return RealNVP(2, n_layers=n_layers, hidden_sizes=(16,))


def snapshot(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def steps_of(path) -> list[int]:
    return [json.loads(line)["step"] for line in (path / "metrics.jsonl").read_text().splitlines()]


class SendSignal(Hook):
    """Sends ``number`` to this process after step ``at`` (as a user or a scheduler would)."""

    def __init__(self, at: int, number: int = signal.SIGTERM) -> None:
        self.at, self.number = at, number

    def on_step(self, state) -> None:
        if state.step == self.at:
            os.kill(os.getpid(), self.number)


class Fail(Hook):
    """Raises after step ``at``: a crash in the middle of a run."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step(self, state) -> None:
        if state.step == self.at:
            raise RuntimeError("crash")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


# -- never overwritten silently ---------------------------------------------------------------
def test_an_existing_run_is_refused_and_left_intact(moons, tmp_path):
    run = tmp_path / "run"
    torchnf.fit(small_flow(), moons, steps=10, run=run, **OPTIONS)
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"already holds a run; pass --overwrite .* --resume"):
        torchnf.fit(small_flow(), moons, steps=10, run=run, **OPTIONS)
    assert snapshot(run) == before


@pytest.mark.parametrize("failure", ["crash", "interrupt"])
def test_a_failed_or_interrupted_overwrite_leaves_the_earlier_run(moons, tmp_path, failure):
    run = tmp_path / "run"
    torchnf.fit(small_flow(), moons, steps=10, run=run, **OPTIONS)
    before = snapshot(run)
    hook = Fail(at=3) if failure == "crash" else SendSignal(at=3)
    with pytest.raises(RuntimeError if failure == "crash" else Interrupted):
        torchnf.fit(
            small_flow(1), moons, steps=10, run=run, overwrite=True, hooks=[hook], **OPTIONS
        )
    assert snapshot(run) == before
    partial = tmp_path / "run.partial"
    # A crash before any checkpoint leaves nothing; an interruption keeps its checkpoint.
    assert partial.exists() == (failure == "interrupt")


def test_overwrite_replaces_the_run_when_the_new_one_completes(moons, tmp_path):
    run = tmp_path / "run"
    torchnf.fit(small_flow(), moons, steps=10, run=run, **OPTIONS)
    flow = small_flow(1)
    torchnf.fit(flow, moons, steps=15, run=run, overwrite=True, **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert steps_of(run) == [5, 10, 15]
    assert_same_weights(torchnf.load(run), flow)


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(moons, tmp_path):
    with pytest.raises(RuntimeError, match="crash"):
        torchnf.fit(small_flow(), moons, steps=10, run=tmp_path / "run", hooks=[Fail(2)], **OPTIONS)
    assert list(tmp_path.iterdir()) == []


# -- resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_resuming_matches_straight_training(
    moons, tmp_path, number
):
    straight = small_flow()
    torchnf.fit(straight, moons, steps=20, **OPTIONS)
    run = tmp_path / "run"
    with pytest.raises(
        Interrupted, match=f"interrupted by {signal.Signals(number).name} at step 7"
    ):
        torchnf.fit(
            small_flow(), moons, steps=20, run=run, hooks=[SendSignal(7, number)], **OPTIONS
        )
    assert load_training_state(run)["step"] == 7
    resumed = small_flow(seed=5)  # other weights: all must come from the checkpoint
    history = torchnf.fit(resumed, moons, steps=20, run=run, resume=True, **OPTIONS)
    assert history["step"] == [10, 15, 20]
    assert_same_weights(straight, resumed)
    assert steps_of(run) == [5, 7, 10, 15, 20]


def test_after_a_crash_the_resumed_log_has_no_repeated_steps(moons, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        torchnf.fit(
            small_flow(), moons, steps=30, run=run, checkpoint_every=10, hooks=[Fail(17)], **OPTIONS
        )
    assert steps_of(run) == [5, 10, 15] and load_training_state(run)["step"] == 10
    torchnf.fit(small_flow(), moons, steps=30, run=run, resume=True, **OPTIONS)
    assert steps_of(run) == [5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda flow, x: (small_flow(n_layers=3), x),
            "another model config .*n_layers: 2 saved, 3",
        ),
        (lambda flow, x: (flow.double(), x.double()), "another dtype"),
        (lambda flow, x: (flow, x.flip(0)), "another data"),
    ],
    ids=["model-config", "dtype", "data"],
)
def test_resume_refuses_another_model_or_data(moons, tmp_path, change, message):
    run = tmp_path / "run"
    torchnf.fit(small_flow(), moons, steps=5, run=run, **OPTIONS)
    before = snapshot(run)
    flow, data = change(small_flow(), moons)
    with pytest.raises(ValueError, match=f"cannot resume, the checkpoint has {message}"):
        torchnf.fit(flow, data, steps=10, run=run, resume=True, **OPTIONS)
    assert snapshot(run) == before


def test_resume_needs_a_checkpoint(moons, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        torchnf.fit(small_flow(), moons, steps=5, run=tmp_path / "none", resume=True, **OPTIONS)


# -- checkpoints ------------------------------------------------------------------------------
class CountCheckpoints(Hook):
    def __init__(self, run) -> None:
        self.run, self.steps = run, []

    def on_step(self, state) -> None:
        state_file = (
            load_training_state(self.run) if (self.run / "model.safetensors").exists() else None
        )
        step = None if state_file is None else state_file["step"]
        if step is not None and (not self.steps or self.steps[-1] != step):
            self.steps.append(step)


def test_checkpoint_cadence_is_independent_of_logging(moons, tmp_path):
    run = tmp_path / "run"
    counter = CountCheckpoints(run)
    torchnf.fit(
        small_flow(), moons, steps=12, run=run, checkpoint_every=4, hooks=[counter], **OPTIONS
    )
    assert counter.steps == [4, 8]  # seen after the next step; the last at the end
    assert load_training_state(run)["step"] == 12


def test_checkpoint_every_few_minutes(moons, tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 61))  # each reading of the clock is 61 s later
    monkeypatch.setattr("torchnf.train.hooks.time.monotonic", lambda: next(clock))
    run = tmp_path / "run"
    counter = CountCheckpoints(run)
    torchnf.fit(
        small_flow(), moons, steps=3, run=run, checkpoint_minutes=1, hooks=[counter], **OPTIONS
    )
    assert counter.steps == [1, 2]


def test_a_checkpoint_is_one_file_of_one_step(moons, tmp_path):
    run = tmp_path / "run"
    flow = small_flow()
    torchnf.fit(flow, moons, steps=6, run=run, **OPTIONS)
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
    ]
    state = load_training_state(run)
    assert state["step"] == 6
    assert int(state["optimizer"]["state"][0]["step"]) == 6
    assert_same_weights(torchnf.load(run), flow)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_files_are_created_with_the_umask(moons, tmp_path, umask):
    old = os.umask(umask)
    try:
        torchnf.fit(small_flow(), moons, steps=2, run=tmp_path / "run", **OPTIONS)
    finally:
        os.umask(old)
    for path in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


# -- early stopping ---------------------------------------------------------------------------
def test_early_stopping_restores_the_best_validation_weights(moons):
    flow = small_flow()
    history = torchnf.fit(
        flow, moons, steps=400, patience=2, lr=0.05, progress=False, log_every=10, seed=0
    )
    assert history.stopped is not None and history.stopped.startswith("early stopping")
    assert history["step"][-1] < 400
    best = min(history["val_nll"])
    # Recompute the validation NLL of the restored weights on the same split.
    split = torch.randperm(len(moons), generator=torch.Generator().manual_seed(0))
    val = moons[split[: int(np.ceil(0.1 * len(moons)))]]
    assert torchnf.train.evaluate_nll(flow, val) == pytest.approx(best, abs=1e-6)


def test_a_plateau_at_a_high_rate_anneals_the_rate_before_stopping(moons):
    history = torchnf.fit(
        small_flow(), moons, steps=4000, patience=2, lr=0.05, progress=False, log_every=10
    )
    assert history.stopped is not None and "annealed to 0" in history.stopped, history.stopped
    plateau = int(re.search(r"to step (\d+)", history.stopped).group(1))
    # Half the patience (one interval of 10 steps) of cosine decay to 0 from the plateau's rate.
    assert history["step"][-1] == plateau + 10
    steps, rates = history["step"], history["lr"]
    before = rates[steps.index(plateau)]
    assert before > 0.1 * 0.05 and rates[-1] == pytest.approx(0.0, abs=1e-12)


def test_a_plateau_at_a_low_rate_stops_at_once():
    flow = small_flow()
    optimizer = torch.optim.SGD(flow.parameters(), 1.0)
    schedule = LearningRateSchedule("cosine")
    stopping = EarlyStopping(2, schedule=schedule, cooldown_steps=50)
    state = SimpleNamespace(step=900, total=1000, optimizer=optimizer, flow=flow, stop=None)
    schedule.on_start(state)  # factor 0.024 at step 900: below min_factor 0.1
    for step, value in ((900, 1.0), (910, 1.1), (920, 1.2)):
        state.step = step
        stopping.on_log(state, {"val_nll": value})
    assert state.stop == (
        "early stopping at step 920: val_nll did not improve on 1 (step 900) for 2 log intervals"
    )
    assert schedule.cooldown is None


def test_the_cooldown_is_saved_with_the_schedule():
    schedule = LearningRateSchedule("cosine")
    state = SimpleNamespace(step=300, total=1000, optimizer=torch.optim.SGD([torch.zeros(1)], 1.0))
    schedule.on_start(state)
    schedule.cool_down(state, 50)
    restored = LearningRateSchedule("cosine")
    restored.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    for step in (300, 320, 350, 900):
        assert restored.factor(step, 1000) == schedule.factor(step, 1000)
    assert schedule.factor(300, 1000) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.3)))
    assert schedule.factor(350, 1000) == 0.0 == schedule.factor(900, 1000)


def test_patience_needs_validation_data(moons):
    with pytest.raises(ValueError, match="patience needs validation data"):
        torchnf.fit(small_flow(), moons, steps=5, patience=3, val_fraction=0.0, progress=False)


# -- data sources -----------------------------------------------------------------------------
def _straight(data, steps: int = 10, **options) -> torch.nn.Module:
    flow = small_flow()
    torchnf.fit(flow, data, steps=steps, **{**OPTIONS, **options})
    return flow


@pytest.mark.parametrize("kind", ["npy-path", "memmap", "dataset"])
def test_every_row_source_trains_as_tensors_do(moons, tmp_path, kind):
    expected = _straight(moons)
    np.save(tmp_path / "x.npy", moons.numpy())
    data = {
        "npy-path": str(tmp_path / "x.npy"),
        "memmap": np.load(tmp_path / "x.npy", mmap_mode="r"),
        "dataset": TensorDataset(moons),
    }[kind]
    assert_same_weights(expected, _straight(data))


def test_a_dataloader_trains_and_resumes_exactly(moons, tmp_path):
    def loader():  # shuffled per epoch by a sampler with set_epoch: an exact order to resume
        dataset = TensorDataset(moons)
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
        return DataLoader(dataset, batch_size=100, sampler=sampler)

    straight = small_flow()
    torchnf.fit(straight, loader(), steps=30, **OPTIONS)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        torchnf.fit(small_flow(), loader(), steps=30, run=run, hooks=[SendSignal(23)], **OPTIONS)
    resumed = small_flow(seed=4)
    torchnf.fit(resumed, loader(), steps=30, run=run, resume=True, **OPTIONS)
    assert_same_weights(straight, resumed)


def test_a_conditional_dataset_of_pairs(moons):
    flow = RealNVP(2, n_layers=2, hidden_sizes=(16,), context_size=1)
    context = (moons[:, :1] > 0).float()
    history = torchnf.fit(flow, TensorDataset(moons, context), steps=10, **OPTIONS)
    assert np.isfinite(history["val_nll"][-1])


@pytest.mark.parametrize(
    "data, message",
    [
        (lambda x, p: str(p / "missing.npy"), "no such data file"),
        (lambda x, p: TensorDataset(x.long()), "expected floating-point values"),
        (lambda x, p: TensorDataset(x[:, :1]), r"expected points in .* of shape \(N, 2\)"),
    ],
    ids=["missing-file", "integer-dataset", "wrong-shape-dataset"],
)
def test_sources_refuse_bad_data(moons, tmp_path, data, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        torchnf.fit(small_flow(), data(moons, tmp_path), steps=1, progress=False)


def test_a_dataloader_carries_its_own_context(moons):
    loader = DataLoader(TensorDataset(moons), batch_size=10)
    with pytest.raises(ValueError, match="a DataLoader carries its own context"):
        torchnf.fit(small_flow(), loader, moons, steps=1, progress=False)


def test_a_memory_mapped_nan_is_found_in_a_late_chunk(moons, tmp_path):
    x = moons.numpy().copy()
    x[1900, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"found NaN at row 1900 \(column 1\)"):
        torchnf.fit(small_flow(), str(tmp_path / "x.npy"), steps=1, progress=False)


def test_fit_takes_raw_contexts_of_an_embedding_net():
    # theta ~ N(0, 1); x = 3 to 8 noisy i.i.d. trials of theta, NaN-padded to 8 rows: the
    # posterior is N(n y / (n + 1), 1 / (n + 1)) with y the trials' mean (noise sd 1).
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3000, 2, generator=g)
    trials = theta[:, None, :] + torch.randn(3000, 8, 2, generator=g)
    counts = torch.randint(3, 9, (3000,), generator=g)
    trials[torch.arange(8) >= counts[:, None]] = float("nan")
    torch.manual_seed(0)
    spec = {"name": "DeepSets", "input_size": 2, "output_size": 8, "n_trials": 8}
    flow = RealNVP(2, n_layers=2, hidden_sizes=(16,), embedding=spec)
    history = torchnf.fit(flow, theta, trials, steps=200, **{**OPTIONS, "log_every": 200})
    prior_nll = 2 * 0.5 * (1 + np.log(2 * np.pi))  # 2.84 nats: what ignoring x would give
    assert history["val_nll"][-1] < prior_nll - 0.5


def test_an_embedding_nets_contexts_are_checked_for_shape():
    spec = {"name": "DeepSets", "input_size": 2, "output_size": 8, "n_trials": 8}
    flow = RealNVP(2, n_layers=1, hidden_sizes=(8,), embedding=spec)
    with pytest.raises(ValueError, match=r"expected context of shape \(N, 8, 2\)"):
        torchnf.fit(flow, torch.zeros(300, 2), torch.zeros(300, 8), steps=1, progress=False)
