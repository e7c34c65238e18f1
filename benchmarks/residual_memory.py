"""Memory and time of one ResidualFlow training step by log-det mode: ``"roulette"`` (the
Russian-roulette estimate, differentiated through its products) against ``"neumann"`` (the
same estimate with the Neumann gradient series taken in the forward pass, Chen et al., 2019,
section 3.2), ``"exact"`` for reference, and the forward graph alone (log-det left out) as the
floor.

Saved bytes: the distinct storages that autograd saves for the backward pass, counted with
``torch.autograd.graph.saved_tensors_hooks``: "held" is what the graph holds when the loss is
formed (what the backward pass needs), "peak" the most held at any time during the forward
pass (with ``"neumann"`` each block's series graph lives only inside its forward), both the
mean over ``--draws`` seeded steps whose random truncations and probes are the same in every
mode (the range of "held" shows the direct gradient's graph growing with the truncation).
Time: median milliseconds of a step (``-log_prob(x).mean()``, ``backward``, an Adam step), the
modes interleaved over ``--rounds`` rounds. On CUDA the peak allocated memory of a
step is printed too. Run::

    python benchmarks/residual_memory.py  # D=32, 8 blocks, hidden (64, 64), batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref

import torch

from torchnf.layers.iresnet import InvertibleResidualBlock
from torchnf.models import ResidualFlow

MODES = ("roulette", "neumann", "exact", "none")


class _Box:
    """A saved tensor, weakly referenced to tell when the graph holding it is freed."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedBytes:
    """Bytes of the distinct storages saved for the backward pass (while the context is
    active) that are still held, and their peak; ``at_loss`` is set by the caller."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = {}  # storage pointer -> [bytes, saved tensors]
        self.held = self.peak = self.at_loss = 0

    def _pack(self, tensor: torch.Tensor) -> _Box:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self.counts.setdefault(key, [0, 0])
        if entry[1] == 0:  # a new storage (maybe at the address of a freed one)
            entry[0] = storage.nbytes()
            self.held += entry[0]
            self.peak = max(self.peak, self.held)
        entry[1] += 1
        box = _Box(tensor)
        weakref.finalize(box, self._release, key)
        return box

    def _release(self, key: int) -> None:
        entry = self.counts[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.held -= entry[0]

    def __enter__(self) -> SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda box: box.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def build(mode: str, args: argparse.Namespace, x: torch.Tensor) -> ResidualFlow:
    torch.manual_seed(0)
    log_det = "roulette" if mode == "none" else mode
    flow = ResidualFlow(
        args.dim, n_layers=args.n_layers, hidden_sizes=args.hidden, log_det=log_det
    ).to(x.device)
    flow.initialize(x)
    return flow


def no_log_det(self, x, weights, slopes, parts):  # the floor: the forward graph alone
    return x.new_zeros(x.shape[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--n-layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--draws", type=int, default=20, help="seeded steps for the bytes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = 1.5 * torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    flows = {mode: build(mode, args, x) for mode in args.modes}
    optimizers = {m: torch.optim.Adam(f.parameters(), lr=1e-4) for m, f in flows.items()}
    original = InvertibleResidualBlock._log_det

    def step(mode: str, seed: int | None = None, counter: SavedBytes | None = None) -> None:
        flow = flows[mode]
        if seed is not None:
            torch.manual_seed(seed)
        InvertibleResidualBlock._log_det = no_log_det if mode == "none" else original
        try:
            if counter is None:
                loss = -flow.log_prob(x).mean()
            else:
                with counter:
                    loss = -flow.log_prob(x).mean()
                counter.at_loss = counter.held
        finally:
            InvertibleResidualBlock._log_det = original
        optimizers[mode].zero_grad(set_to_none=True)
        loss.backward()

    held, peak, cuda_peak = {}, {}, {}
    for mode in args.modes:  # bytes: the same draws in every mode, no optimizer step
        held[mode], peak[mode], cuda_peak[mode] = [], [], []
        for seed in range(args.draws):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            counter = SavedBytes()
            step(mode, seed, counter)
            held[mode].append(counter.at_loss)
            peak[mode].append(counter.peak)
            if device.type == "cuda":
                cuda_peak[mode].append(torch.cuda.max_memory_allocated())
    times: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for mode in args.modes:  # warm-up
        for _ in range(3):
            step(mode)
            optimizers[mode].step()
    for _ in range(args.rounds):
        for mode in args.modes:
            for _ in range(args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step(mode)
                optimizers[mode].step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[mode].append(1e3 * (time.perf_counter() - start))

    mib = 2.0**-20
    print(
        f"ResidualFlow D={args.dim}, {args.n_layers} blocks, hidden {tuple(args.hidden)}, "
        f"batch {args.batch}, float32, {device.type}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    header = "| log_det | saved, held (MiB; min-max) | saved, peak (MiB) | ms / step |"
    rule = "|---|---|---|---|"
    if device.type == "cuda":
        header, rule = header + " CUDA peak (MiB) |", rule + "---|"
    print(header)
    print(rule)
    for mode in args.modes:
        name = "(no log-det)" if mode == "none" else f'"{mode}"'
        row = (
            f"| {name} | {statistics.mean(held[mode]) * mib:.2f} "
            f"({min(held[mode]) * mib:.2f}-{max(held[mode]) * mib:.2f}) | "
            f"{statistics.mean(peak[mode]) * mib:.2f} | {statistics.median(times[mode]):.1f} |"
        )
        if device.type == "cuda":
            row += f" {statistics.mean(cuda_peak[mode]) * mib:.1f} |"
        print(row)


if __name__ == "__main__":
    main()
