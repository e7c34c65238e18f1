"""A ``.npy`` file is trained on memory-mapped: the process's anonymous memory (what a loaded
copy would take; the file's mapped pages are the page cache's, reclaimable) never grows by
more than a fraction of the file, whose rows are read batch by batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROWS, COLUMNS = 400_000, 64  # 100 MiB of float32

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists()
    or "RssAnon" not in Path("/proc/self/status").read_text(),
    reason="needs Linux's /proc/self/status (RssAnon)",
)

SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    import torch
    from torchnf import cli

    def anonymous() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon")

    torch.set_num_threads(1)
    path, out = sys.argv[1], sys.argv[2]
    common = ["--model", "RealNVP", "--n-layers", "1", "--hidden-sizes", "8", "--steps", "3",
              "--batch-size", "64", "--log-every", "3", "--no-plots", "--quiet", "--out", out]
    # Warm up on a small built-in set: torch's one-time allocations are not the data's.
    warm = ["train", "--data", "moons", "--n-points", "1000", "--name", "warm"]
    assert cli.main([*warm, *common]) == 0
    base, peak, done = anonymous(), [0], [False]

    def watch() -> None:
        while not done[0]:
            peak[0] = max(peak[0], anonymous())
            time.sleep(0.002)

    thread = threading.Thread(target=watch)
    thread.start()
    status = cli.main(["train", "--data", path, "--name", "big", *common])
    done[0] = True
    thread.join()
    print(status, peak[0] - base)
    """
)


def test_train_on_a_npy_file_streams_it(tmp_path):
    path = tmp_path / "big.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(ROWS, COLUMNS))
    rng = np.random.default_rng(0)
    for start in range(0, ROWS, 50_000):
        array[start : start + 50_000] = rng.standard_normal((50_000, COLUMNS), dtype=np.float32)
    array.flush()
    del array
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    status, growth = (int(v) for v in result.stdout.split()[-2:])
    assert status == 0, result.stderr[-2000:]
    size = path.stat().st_size
    # Indices (a few int64 per row: the split and each epoch's order) and one 16 MiB read
    # chunk are allowed; a loaded copy of the file (100 MiB) is not.
    assert growth < 0.5 * size, f"anonymous memory grew by {growth / 2**20:.0f} MiB"
