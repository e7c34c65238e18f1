#!/usr/bin/env bash
# Issue 7's GPU measurements in one command, on a machine with CUDA (e.g. the `device` tool's
# H100): the CUDA tests (CUDA equals CPU, no host sync per step, CUDA-graph training equals
# eager, low-precision conditioners), then `compare.py --speed --device cuda` in eager and
# compiled modes (with CUDA graphs), against the peers that are importable. Also the main
# job (`torchnf train`) with CUDA graphs, and a torchrun run (NCCL when it has 2+ GPUs).
#
# The peers are pure-Python packages. A machine that reaches no registry gets them as wheels
# built here and carried along (the `device` tool's `carry`, with .whl ignored by git):
#
#     python3 -m pip wheel --no-deps -w .whl zuko==1.6.0 nflows==0.14 normflows==1.7.3
#
# Results (device, test log, speed table) go to ${OUT:-gpu-results}/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/peers .whl/*.whl
  export PYTHONPATH="/tmp/peers${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/device.txt"
python3 -m pytest tests/test_cuda.py tests/test_precision.py -q -p no:cacheprovider 2>&1 |
  tee "$out/tests.txt"
# The main job on the GPU in its fastest mode, and DDP over NCCL (one process per GPU).
python3 -m torchnf train --device cuda --compile reduce-overhead --out "$out/runs" --no-plots \
  2>&1 | tail -n 3 | tee "$out/train.txt"
python3 -m torch.distributed.run --nproc_per_node="$(nvidia-smi -L | wc -l)" -m torchnf train \
  --device cuda --steps 200 --out "$out/runs" --name ddp --no-plots 2>&1 | tail -n 3 |
  tee -a "$out/train.txt"
python3 benchmarks/compare.py --speed --device cuda --modes eager default reduce-overhead \
  "$@" 2>&1 | tee "$out/speed.md"
# torchnf with bfloat16 conditioners (mixed precision where the flow stays exact).
python3 benchmarks/compare.py --speed --device cuda --modes eager reduce-overhead \
  --libraries torchnf --conditioner-dtype bfloat16 "$@" 2>&1 | tee -a "$out/speed.md"
