#!/usr/bin/env bash
# The GPU measurements in one device call (at most 10 minutes a command, 15 minutes of device
# time a session, machine start included), most important first, each step under its own
# `timeout` and the whole under a budget of ${GPU_BUDGET_S:-540} s:
#
#   1. the CUDA tests (CUDA equals CPU, no host sync per step, low precision), then the
#      CUDA-graph test (float64 training with and without CUDA graphs);
#   2. `compare.py --speed` eager: torchnf against the importable peers, D = 16 and 64 (MAF first);
#   3. torchnf's compiled rows with CUDA graphs (reduce-overhead), MAF first;
#   4. torchnf with bfloat16 conditioners, eager;
#   5. the main job (`torchnf train`) with CUDA graphs, and a torchrun run (NCCL with 2+ GPUs);
#   6. the peers compiled with CUDA graphs (optional: it may not finish).
#
# Every step writes its output to $OUT as it goes (unbuffered, through tee), so a step that
# times out, or the device call ending, loses nothing that came before. summary.txt gets a
# line when a step starts and one when it ends (ok, failed, timed out, or skipped when the
# budget is spent); the script always goes on to the next step. Arguments are passed to every
# compare.py call (e.g. `--repeats 5`). DEVICE=cpu runs the same steps on the CPU as a dry
# run (the CUDA tests skip, reduce-overhead rows are left out): with tiny sizes,
#
#     DEVICE=cpu OUT=/tmp/gpu GPU_BUDGET_S=300 bash benchmarks/gpu.sh --batch-size 64 \
#         --n-eval 32 --hidden-sizes 8 --n-layers 2 --repeats 1 --calls 1
#
# The peers are pure-Python packages. A machine that reaches no registry gets them as wheels
# built here and carried along (the `device` tool's `carry`, with .whl ignored by git):
#
#     python3 -m pip wheel --no-deps -w .whl zuko==1.6.0 nflows==0.14 normflows==1.7.3
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-results}"
device="${DEVICE:-cuda}"
budget="${GPU_BUDGET_S:-540}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
export PYTHONUNBUFFERED=1

# step NAME SECONDS FILE COMMAND...: run COMMAND under `timeout` (cut to what is left of the
# budget), append its output to $out/FILE as it comes, and record the outcome in summary.txt.
step() {
  local name=$1 limit=$2 file=$3 left start rc
  shift 3
  left=$((budget - SECONDS))
  if ((left < 15)); then
    echo "$name: skipped, budget spent (${SECONDS}s of ${budget}s)" | tee -a "$summary"
    return
  fi
  ((limit > left)) && limit=$left
  start=$SECONDS
  echo "$name: started at ${start}s, limit ${limit}s -> $file" | tee -a "$summary"
  echo "## $name" >>"$out/$file"
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$out/$file"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) echo "$name: ok in $((SECONDS - start))s" ;;
    124 | 137) echo "$name: TIMED OUT at ${limit}s (its output so far is in $file)" ;;
    *) echo "$name: failed with exit code $rc after $((SECONDS - start))s (see $file)" ;;
  esac | tee -a "$summary"
}

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/peers .whl/*.whl
  export PYTHONPATH="/tmp/peers${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null ||
    echo "no nvidia-smi (device $device)"
  python3 -c "import torch; print('torch', torch.__version__)"
} | tee "$out/device.txt"

compare=(python3 benchmarks/compare.py --speed --device "$device")
pytest=(python3 -m pytest -q -p no:cacheprovider)

# 1. Correctness on the GPU first: nothing below means much if these fail.
step cuda-tests 70 tests.txt "${pytest[@]}" tests/test_cuda.py tests/test_precision.py \
  -k "not cuda_graphs"
step cuda-graph-test 100 tests.txt "${pytest[@]}" tests/test_cuda.py -k cuda_graphs
# 2. Eager steps/s against the peers (kernels per step in the ops column).
step eager-maf 45 speed-eager.md "${compare[@]}" --models MAF --modes eager "$@"
step eager-realnvp-nsf 75 speed-eager.md "${compare[@]}" --models RealNVP NSF --modes eager "$@"
# 3. torchnf with CUDA graphs; each row compiles its step, floor and log_prob, per dimension.
for dim in 16 64; do
  step "graphs-maf-$dim" 45 speed-graphs.md "${compare[@]}" --libraries torchnf --models MAF \
    --dims "$dim" --modes reduce-overhead "$@"
done
# 4. bfloat16 conditioners (mixed precision where the flow stays exact).
step bf16-eager 35 speed-bf16.md "${compare[@]}" --libraries torchnf --modes eager \
  --conditioner-dtype bfloat16 "$@"
# 5. The main job in its fastest mode, then DDP (one process per GPU; NCCL with 2+ GPUs).
step train-graphs 50 train.txt python3 -m torchnf train --device "$device" --steps 500 \
  --compile reduce-overhead --out "$out/runs" --name graphs --no-plots
gpus=$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")
step torchrun 25 train.txt python3 -m torch.distributed.run --nproc_per_node="$gpus" \
  -m torchnf train --device "$device" --steps 200 --out "$out/runs" --name ddp --no-plots
# 6. Optional, last: the peers compiled with CUDA graphs (slow to compile).
step graphs-peers 50 speed-graphs-peers.md "${compare[@]}" --libraries zuko nflows normflows \
  --models MAF --dims 16 --modes reduce-overhead "$@"
echo "done at ${SECONDS}s of ${budget}s" >>"$summary"
echo "== summary" && cat "$summary"
