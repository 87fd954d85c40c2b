#!/usr/bin/env bash
# GPU check and timings. On a CUDA machine: the CUDA-marked tests
# (`pytest -m cuda`), seconds per iteration of dm / dc / mtt on the GPU for 1x28x28
# (mnist-5k) and 3x32x32 (random images in an npz) at IPC 1 / 10 / 50, the GFLOP/s of a DM
# iteration and its share of the GPU's measured peak (bench/distill.py), `evaluate`
# on the GPU, and one `torchrun --nproc-per-node 1` run on NCCL. Prints one table and the
# wall time; meant to finish in < 8 min. A step that fails is a FAILED row (its error is
# printed after the table) and the script exits 1.
#
#   bench/gpu.sh                       # on a CUDA machine
#   GPU_SH_DRY=1 bench/gpu.sh          # dry run on a CPU: the same steps, tiny sizes
#
# The dry run checks the script's logic, not the GPU: device cpu, gloo instead of NCCL,
# IPC 1 and 2, 3 iterations, 8 real images per class, one inner step for dc, 2 student
# steps for mtt, 2-epoch experts and evaluation, a 500-image npz. NOT YET RUN ON A GPU: no device was available when it was written.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's habactl
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STARTED=$SECONDS

if [ -n "${GPU_SH_DRY:-}" ]; then
  DEVICE=cpu IPCS="1 2" ITERS=3 EXPERT_EPOCHS=2 EVAL_EPOCHS=2 PER_CLASS=50
  DM=(--real-per-class 8) DC=(--real-per-class 8 --inner-loop 1)
  MTT=(--syn-steps 2 --expert-epochs 1 --max-start-epoch 1)
  export HABACTL_DIST_BACKEND=gloo
else
  DEVICE=cuda IPCS="1 10 50" ITERS=${ITERS:-10} EXPERT_EPOCHS=3 EVAL_EPOCHS=50 PER_CLASS=500
  DM=() DC=() MTT=()  # each objective's defaults
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device (GPU_SH_DRY=1 for a CPU dry run)')" ||
    exit 2
fi

TABLE="$WORK/table"
FAILURES="$WORK/failures"
: >"$FAILURES"
printf '%-10s %-4s %-10s %9s %9s %6s\n' data ipc what seconds 'GFLOP/s' share >"$TABLE"

row() {  # row DATA IPC WHAT SECONDS [GFLOP/S SHARE]
  printf '%-10s %-4s %-10s %9s %9s %6s\n' "$1" "$2" "$3" "$4" "${5:--}" "${6:--}" >>"$TABLE"
}

step() {  # step LOG COMMAND...: run it, keep its output; on failure note it and return 1
  local log=$1
  shift
  if "$@" >"$log" 2>&1; then
    return 0
  fi
  { echo "== $*"; tail -n 5 "$log"; } >>"$FAILURES"
  return 1
}

sit() {  # seconds per iteration from a metrics log, after the first 2 (warm-up)
  "$PY" - "$1" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if r.get("event") == "iteration"]
a, b = rows[1], rows[-1]
print(f"{(b['elapsed_s'] - a['elapsed_s']) / (b['iteration'] - a['iteration']):.4f}")
PYEOF
}

flops() {  # "seconds GFLOP/s share" from bench/distill.py one's JSON line
  "$PY" - "$1" <<'PYEOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"{r['s_per_it']:.4f} {r['gflop_per_s']:.1f} {r['share_of_peak']:.0%}")
PYEOF
}

# 1. The CUDA-marked tests (in the dry run they are collected and skipped).
if step "$WORK/pytest.log" "$PY" -m pytest -q -m cuda tests; then
  row tests - "pytest cuda" "$(tail -n 1 "$WORK/pytest.log" | grep -oE '[0-9.]+s' | tail -n 1)"
else
  row tests - "pytest cuda" FAILED
fi

# 3x32x32: random images, 10 classes (timing only, no accuracy meaning).
"$PY" - "$WORK/rgb.npz" "$PER_CLASS" <<'PYEOF'
import sys
import numpy as np
rng = np.random.default_rng(0)
per = int(sys.argv[2])
x = rng.integers(0, 256, (10 * per, 32, 32, 3), dtype=np.uint8)
y = np.repeat(np.arange(10), per)
np.savez(sys.argv[1], x_train=x, y_train=y, x_test=x[: 2 * per], y_test=y[: 2 * per])
PYEOF

# 2. Iterations of each objective, a DM iteration's GFLOP/s, and evaluate.
for data in mnist-5k "$WORK/rgb.npz"; do
  name=$(basename "$data" .npz)
  shape=1x28x28
  [ "$name" = rgb ] && shape=3x32x32
  experts="$WORK/experts-$name"
  step "$WORK/experts-$name.log" "$PY" -m habactl experts "$data" -o "$experts" --experts 2 \
    --epochs "$EXPERT_EPOCHS" --device "$DEVICE" -q || row "$name" - experts FAILED
  for ipc in $IPCS; do
    for objective in dm dc mtt; do
      case $objective in
        dm) extra=("${DM[@]}") ;;
        dc) extra=("${DC[@]}") ;;
        mtt) extra=(--experts "$experts" "${MTT[@]}") ;;
      esac
      out="$WORK/$name-$objective-$ipc"
      if step "$out.log" "$PY" -m habactl compress "$data" --objective "$objective" \
        --ipc "$ipc" --iterations "$ITERS" --device "$DEVICE" -q -o "$out.haba" \
        --log-file "$out.jsonl" "${extra[@]}"; then
        row "$name" "$ipc" "$objective" "$(sit "$out.jsonl")"
      else
        row "$name" "$ipc" "$objective" FAILED
      fi
    done
    # GFLOP/s of one DM iteration (raw, the default 32 real images per class; the dry run 8)
    # against the peak (matmul or conv) measured in the same process.
    real=32
    [ -n "${GPU_SH_DRY:-}" ] && real=8
    if step "$WORK/flops-$name-$ipc.log" "$PY" bench/distill.py one "$shape:$ipc:$real:raw" \
      --device "$DEVICE" --iterations 3 --warmup 1; then
      row "$name" "$ipc" "dm flops" $(flops "$WORK/flops-$name-$ipc.log")
    else
      row "$name" "$ipc" "dm flops" FAILED
    fi
    if [ -f "$WORK/$name-dm-$ipc.haba" ]; then
      start=$SECONDS
      if step "$WORK/eval-$name-$ipc.log" "$PY" -m habactl evaluate "$WORK/$name-dm-$ipc.haba" \
        --data "$data" --models 1 --epochs "$EVAL_EPOCHS" --device "$DEVICE" -q --json; then
        row "$name" "$ipc" "eval$EVAL_EPOCHS" "$((SECONDS - start))"
      else
        row "$name" "$ipc" "eval$EVAL_EPOCHS" FAILED
      fi
    fi
  done
done

# 3. One rank under torchrun (NCCL on the GPU, gloo in the dry run): the launch path.
if step "$WORK/torchrun.log" "$PY" -m torch.distributed.run --nproc-per-node 1 -m habactl \
  compress mnist-5k --objective dm --ipc 1 --iterations "$ITERS" --device "$DEVICE" -q \
  -o "$WORK/nccl.haba" --log-file "$WORK/nccl.jsonl" "${DM[@]}"; then
  row mnist-5k 1 "dm torchrun" "$(sit "$WORK/nccl.jsonl")"
else
  row mnist-5k 1 "dm torchrun" FAILED
fi

cat "$TABLE"
echo "device $DEVICE${GPU_SH_DRY:+ (dry run)}, $ITERS iterations per run, $((SECONDS - STARTED)) s in all"
if [ -s "$FAILURES" ]; then
  echo "FAILED steps:"
  cat "$FAILURES"
  exit 1
fi
