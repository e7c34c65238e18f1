"""Memory and time of one maximum-likelihood training step of a CNF: the adjoint method
(``CNF(adjoint=True)``) against backpropagation through the solver's stages.

Run: ``python benchmarks/cnf_adjoint.py`` (one CPU thread, about a minute) or
``python benchmarks/cnf_adjoint.py --quick`` (seconds, a smoke test). The field is that of
``CNF(2)`` (three hidden layers of 64, SiLU, float32) after ``--fm-steps`` steps of flow
matching on the two moons (seed 0), so that its dynamics are a trained field's rather than
the zero field of a fresh model; each row then times a step of ``-log_prob(x).mean()`` and
its backward pass on a batch of ``--batch-size`` points with the exact divergence, at the
row's solver tolerance (``atol = rtol``).

Columns: the tolerance; the method; the field evaluations of the forward solve (``NFE fwd``)
and of the adjoint's backward solve (``NFE bwd``, each a field evaluation and a
vector-Jacobian product); the peak of the bytes autograd holds in saved tensors during the
step (``saved MiB``: counted by ``torch.autograd.graph.saved_tensors_hooks``, each storage
once while any graph holds it, the parameters left out; this is the memory that grows with
the number of solver steps, which ``tracemalloc`` cannot see); and the median time of a step
(forward and backward) over ``--repeats``, as CPU time of the process (one thread: the
compute, whatever else the machine runs) and as wall time. On CUDA (``--device cuda``) a
column adds ``torch.cuda.max_memory_allocated`` over the step (and CPU time means little).
In float32 the solver raises tolerances below 7.6e-6 to that floor, so rows below it repeat
the 1e-5 row.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

from torchnf import fit
from torchnf.data import get_target
from torchnf.models import CNF


class SavedTensorMeter:
    """The bytes of the storages autograd holds in saved tensors, now and at the peak."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude  # storage addresses not to count (the parameters)
        self.refs: dict[int, list[int]] = {}  # address -> [references, bytes]
        self.current = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> _Held:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self.exclude:
            entry = self.refs.setdefault(key, [0, storage.nbytes()])
            if entry[0] == 0:
                self.current += entry[1]
                self.peak = max(self.peak, self.current)
            entry[0] += 1
        # A detached alias: holding a node's own output (with its grad_fn) would make a
        # reference cycle through the graph that nothing frees, and count it for ever.
        return _Held(self, key, tensor.detach())

    def release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.current -= entry[1]
                del self.refs[key]


class _Held:
    """A saved tensor; releasing it (when autograd frees the graph) uncounts its storage."""

    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter.release(self.key)


@contextmanager
def saved_tensor_meter(module: torch.nn.Module):
    """Count the saved tensors of what runs inside (forward and backward passes)."""
    meter = SavedTensorMeter({p.untyped_storage().data_ptr() for p in module.parameters()})
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda held: held.tensor):
        yield meter


def trained_field(args: argparse.Namespace) -> dict:
    """A CNF's state after a few steps of flow matching on the moons."""
    torch.manual_seed(0)
    flow = CNF(2, hidden_sizes=tuple(args.hidden_sizes))
    data = get_target("moons").sample(4096, seed=0)
    fit(
        flow,
        data,
        objective="flow_matching",
        steps=args.fm_steps,
        batch_size=256,
        lr=3e-3,
        progress=False,
    )
    return flow.state_dict()


def step(flow: CNF, x: torch.Tensor) -> None:
    flow.zero_grad()
    loss = -flow.log_prob(x).mean()
    loss.backward()


def measure(state: dict, adjoint: bool, tol: float, x: torch.Tensor, args) -> dict:
    flow = CNF(2, hidden_sizes=tuple(args.hidden_sizes), atol=tol, rtol=tol, adjoint=adjoint)
    flow.load_state_dict(state)
    flow.to(x.device)
    layer = flow.bijector[-1]
    step(flow, x)  # warm-up
    with saved_tensor_meter(flow) as meter:
        step(flow, x)
    row = {
        "tol": tol,
        "method": "adjoint" if adjoint else "backprop",
        "nfe_forward": layer.nfe,
        "nfe_backward": layer.nfe_adjoint if adjoint else 0,
        "saved_mib": meter.peak / 2**20,
    }
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(flow, x)
        torch.cuda.synchronize()
        row["cuda_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    cpu, wall = [], []
    for _ in range(args.repeats):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        step(flow, x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    row["cpu_ms"] = 1000 * statistics.median(cpu)
    row["wall_ms"] = 1000 * statistics.median(wall)
    return row


def table(rows: list[dict]) -> str:
    cuda = "cuda_mib" in rows[0]
    head = "| tol | method | NFE fwd | NFE bwd | saved MiB |" + (" CUDA peak MiB |" if cuda else "")
    head += " CPU ms | wall ms |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['tol']:.0e} | {r['method']} | {r['nfe_forward']} | {r['nfe_backward']} | "
            f"{r['saved_mib']:.2f} |"
        )
        if cuda:
            line += f" {r['cuda_mib']:.1f} |"
        lines.append(line + f" {r['cpu_ms']:.0f} | {r['wall_ms']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[64, 64, 64])
    parser.add_argument("--fm-steps", type=int, default=500)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny settings, a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.hidden_sizes, args.fm_steps = 64, [16], 20
        args.tolerances, args.repeats = [1e-4], 1
    torch.set_num_threads(args.threads)
    state = trained_field(args)
    x = get_target("moons").sample(args.batch_size, seed=1).to(args.device)
    rows = [
        measure(state, adjoint, tol, x, args)
        for tol in args.tolerances
        for adjoint in (False, True)
    ]
    print(
        f"CNF(2), hidden {args.hidden_sizes}, batch {args.batch_size}, exact divergence, "
        f"float32, {args.device}, torch {torch.__version__}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
