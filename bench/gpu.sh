#!/usr/bin/env bash
# GPU check and timings (issue 13). On a CUDA machine: the CUDA-only tests, seconds per
# iteration of dm / dc / mtt on the GPU for 1x28x28 (mnist-5k) and 3x32x32 (random
# images in an npz) at IPC 1 / 10 / 50, `evaluate` on the GPU, and one
# `torchrun --nproc-per-node 1` run on NCCL. Prints one table. Meant to finish in < 8 min.
# NOT RUN ON A GPU YET: no device was available when it was written.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-$(dirname "$PY")/torchrun}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ITERS=${ITERS:-10}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh: no CUDA device')"
"$PY" -m pytest -q -k cuda tests/test_distributed.py

# 3x32x32: random images, 10 classes, 500 per class (timing only, no accuracy meaning).
"$PY" - "$WORK/rgb.npz" <<'PYEOF'
import sys
import numpy as np
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
y = np.repeat(np.arange(10), 500)
np.savez(sys.argv[1], x_train=x, y_train=y, x_test=x[:1000], y_test=y[:1000])
PYEOF

sit() {  # seconds per iteration from a metrics log, after the first 2 (warm-up)
  "$PY" - "$1" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in rows if r.get("event") == "iteration"]
a, b = rows[1], rows[-1]
print(f"{(b['elapsed_s'] - a['elapsed_s']) / (b['iteration'] - a['iteration']):.4f}")
PYEOF
}

printf '%-10s %-4s %-6s %10s\n' data ipc what 'seconds' >"$WORK/table"
for data in mnist-5k "$WORK/rgb.npz"; do
  name=$(basename "$data" .npz)
  "$PY" -m habactl experts "$data" -o "$WORK/experts-$name" --experts 2 --epochs 3 \
    --device cuda -q
  for ipc in 1 10 50; do
    for objective in dm dc mtt; do
      extra=()
      [ "$objective" = mtt ] && extra=(--experts "$WORK/experts-$name")
      out="$WORK/$name-$objective-$ipc"
      "$PY" -m habactl compress "$data" --objective "$objective" --ipc "$ipc" \
        --iterations "$ITERS" --device cuda -q -o "$out.haba" --log-file "$out.jsonl" \
        "${extra[@]}"
      printf '%-10s %-4s %-6s %10s\n' "$name" "$ipc" "$objective" "$(sit "$out.jsonl")" \
        >>"$WORK/table"
    done
    start=$("$PY" -c 'import time; print(time.time())')
    "$PY" -m habactl evaluate "$WORK/$name-dm-$ipc.haba" --data "$data" --models 1 \
      --epochs 50 --device cuda -q --json >/dev/null
    printf '%-10s %-4s %-6s %10s\n' "$name" "$ipc" "eval50" \
      "$("$PY" -c "import time; print(f'{time.time() - $start:.1f}')")" >>"$WORK/table"
  done
done

# One rank on NCCL: the launch path end to end.
"$TORCHRUN" --nproc-per-node 1 -m habactl compress mnist-5k --objective dm --ipc 1 \
  --iterations "$ITERS" --device cuda -q -o "$WORK/nccl.haba" --log-file "$WORK/nccl.jsonl"
printf '%-10s %-4s %-6s %10s\n' mnist-5k 1 "dm nccl" "$(sit "$WORK/nccl.jsonl")" >>"$WORK/table"
cat "$WORK/table"
