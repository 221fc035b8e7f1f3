#!/usr/bin/env bash
# Data-parallel training with msrun (HCCL on Ascend, NCCL on GPU, MindSpore's CPU collectives on CPU).
#
#   bash scripts/run_distribute.sh CONFIG [NUM_WORKERS] [train.py overrides ...]
#
# NUM_WORKERS defaults to the devices found: Ascend NPUs (/dev/davinciN), else NVIDIA GPUs, else 1.
# Multi-node: set NNODES, NODE_RANK and MASTER_ADDR (and MASTER_PORT) on every node; NUM_WORKERS is
# then the workers per node. Per-rank logs go to <ckpt_save_dir>/logs/worker_<rank>.log. Exits
# non-zero when any worker fails. Uses .venv when it exists (created by scripts/quickstart.sh). The config,
# the data tree and the environment are checked before any worker starts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Paths (the config, data_dir, ckpt_save_dir, resume) are taken from the caller's directory, as
# train.py takes them: no cd here.
if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
CONFIG="$1"; shift
if [ ! -f "$CONFIG" ]; then echo "error: config file $CONFIG not found (from $(pwd))" >&2; exit 2; fi
if [ -x "$ROOT/.venv/bin/python" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi   # msrun starts the python on PATH
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import mindspore, mindcv" >/dev/null 2>&1; then
  echo "error: $(command -v python || echo python) cannot import mindspore and mindcv: create $ROOT/.venv with" \
       "bash $ROOT/scripts/quickstart.sh, or pip install $ROOT into this environment" >&2
  exit 2
fi
if ! command -v msrun >/dev/null 2>&1; then echo "error: msrun (MindSpore's launcher) is not on PATH" >&2; exit 2; fi
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  WORKERS="$1"; shift
else
  WORKERS=$(ls /dev/davinci[0-9]* 2>/dev/null | wc -l || true)
  if [ "$WORKERS" -eq 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
    WORKERS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  fi
  if [ "$WORKERS" -eq 0 ]; then WORKERS=1; fi
fi
if [ "$WORKERS" -lt 1 ]; then echo "error: NUM_WORKERS must be >= 1" >&2; exit 2; fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-$((20000 + RANDOM % 20000))}"
# Before any worker starts: the config and the overrides, and the data tree (splits, class count);
# prints the output directory.
OUT=$(python -m slab_ms.engine.task "$CONFIG" --check-data --get ckpt_save_dir "$@") || exit 2
OUT=$(echo "$OUT" | tail -n 1)
mkdir -p "$OUT/logs"
echo "== msrun: $NNODES node(s) x $WORKERS worker(s), node rank $NODE_RANK, master $MASTER_ADDR:$MASTER_PORT, logs in $OUT/logs"
status=0
msrun --worker_num=$((WORKERS * NNODES)) --local_worker_num="$WORKERS" --master_addr="$MASTER_ADDR" \
  --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" --log_dir="$OUT/logs" --join=True \
  python "$ROOT/train.py" --config "$CONFIG" --distribute true "$@" || status=$?
if [ $status -ne 0 ]; then
  echo "error: distributed training failed (exit $status); see $OUT/logs/worker_*.log" >&2
  for f in "$OUT"/logs/worker_*.log; do
    [ -f "$f" ] && grep -h "^error:" "$f" | head -n 1 >&2 || true
  done
  exit $status
fi
if [ -f "$OUT/summary.json" ] && [ "$NODE_RANK" = "0" ]; then cat "$OUT/summary.json" | python -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'; fi
