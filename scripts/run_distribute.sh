#!/usr/bin/env bash
# Data-parallel training with msrun; `bash scripts/run_distribute.sh --help` explains it all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() {
  cat <<'EOF'
usage: bash scripts/run_distribute.sh CONFIG [NUM_WORKERS] [train.py overrides ...]

Data-parallel training with msrun (HCCL on Ascend, NCCL on GPU, MindSpore's CPU collectives on
CPU): train.py --distribute true on NUM_WORKERS workers per node. CONFIG is a YAML file or a
shipped config's name (train.py --list-configs). NUM_WORKERS defaults to the devices found:
Ascend NPUs (/dev/davinciN), else NVIDIA GPUs, else 1. Paths (CONFIG, data_dir, ckpt_save_dir)
are the caller's, as for train.py. The config, the data tree and the environment are checked
before any worker starts; per-rank logs go to <ckpt_save_dir>/logs/worker_<rank>.log; the exit
status is non-zero when any worker fails. Uses .venv when it exists.

Environment (default in brackets):
  NNODES            nodes in the run [1]; NUM_WORKERS is then the workers per node
  NODE_RANK         this node's rank, 0 .. NNODES-1 [0]; node 0 runs msrun's scheduler
  MASTER_ADDR       node 0's address, the same on every node [127.0.0.1; required when NNODES > 1]
  MASTER_PORT       the scheduler's port, the same on every node [a free port; required when NNODES > 1]
  CLUSTER_TIME_OUT  seconds msrun waits for every node and worker to join [600, msrun's default]
  BIND_CORE         true: msrun binds each worker to its own CPU cores (--bind_core) [false]

Examples:
  bash scripts/run_distribute.sh configs/slab_swin_t.yaml 8 --data_dir /data/imagenet
  bash scripts/run_distribute.sh quickstart_digits 2 --ckpt_save_dir out/dp2      # CPU, 2 workers

  # 2 nodes x 8 devices: run this on node 0 (10.0.0.1) and, with NODE_RANK=1, on node 1
  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=8118 \
    bash scripts/run_distribute.sh configs/slab_swin_b.yaml 8 --data_dir /data/imagenet
  NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=8118 \
    bash scripts/run_distribute.sh configs/slab_swin_b.yaml 8 --data_dir /data/imagenet
EOF
}
fail() { echo "error: $*" >&2; exit 2; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi
if [ $# -lt 1 ]; then usage >&2; exit 2; fi
CONFIG="$1"; shift

# The launch settings first: checked without starting Python.
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
CLUSTER_TIME_OUT="${CLUSTER_TIME_OUT:-600}"
BIND_CORE="${BIND_CORE:-false}"
[[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || fail "NNODES must be a positive integer, got '$NNODES'"
[[ "$NODE_RANK" =~ ^[0-9]+$ ]] && [ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK must be within 0..$((NNODES - 1)) (NNODES=$NNODES), got '$NODE_RANK'"
[[ "$CLUSTER_TIME_OUT" =~ ^-?[0-9]+$ ]] || fail "CLUSTER_TIME_OUT must be seconds (an integer; negative: wait forever), got '$CLUSTER_TIME_OUT'"
case "${BIND_CORE,,}" in true|1|yes) BIND_CORE=True;; false|0|no) BIND_CORE=False;; *) fail "BIND_CORE must be true or false, got '$BIND_CORE'";; esac
if [ "$NNODES" -gt 1 ]; then   # every node must name the same scheduler: no per-node defaults
  [ -n "${MASTER_ADDR:-}" ] || fail "NNODES=$NNODES needs MASTER_ADDR (node 0's address, the same on every node)"
  [ -n "${MASTER_PORT:-}" ] || fail "NNODES=$NNODES needs MASTER_PORT (one free port, the same on every node; each node would pick its own)"
fi
if [ -n "${MASTER_PORT:-}" ] && ! { [[ "$MASTER_PORT" =~ ^[0-9]+$ ]] && [ "$MASTER_PORT" -ge 1024 ] && [ "$MASTER_PORT" -le 65535 ]; }; then
  fail "MASTER_PORT must be a port number within 1024..65535, got '$MASTER_PORT'"
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"

if [ -x "$ROOT/.venv/bin/python" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi   # msrun starts the python on PATH
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import mindspore, mindcv" >/dev/null 2>&1; then
  fail "$(command -v python || echo python) cannot import mindspore and mindcv: create $ROOT/.venv with" \
       "bash $ROOT/scripts/quickstart.sh, or pip install $ROOT into this environment"
fi
command -v msrun >/dev/null 2>&1 || fail "msrun (MindSpore's launcher) is not on PATH"
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
  WORKERS="$1"; shift
else
  WORKERS=$(ls /dev/davinci[0-9]* 2>/dev/null | wc -l || true)
  if [ "$WORKERS" -eq 0 ] && command -v nvidia-smi >/dev/null 2>&1; then
    WORKERS=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  fi
  if [ "$WORKERS" -eq 0 ]; then WORKERS=1; fi
fi
[ "$WORKERS" -ge 1 ] || fail "NUM_WORKERS must be >= 1"
if [ -z "${MASTER_PORT:-}" ]; then   # one node: any free port
  MASTER_PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
fi
# Before any worker starts: the config (a file or a shipped name) and the overrides, the model name and
# the data tree (splits, class count); prints the config file and the output directory.
CHECKED=$(python -m slab_ms.engine.task "$CONFIG" --check-data --get config --get ckpt_save_dir "$@") || exit 2
CONFIG_FILE=$(echo "$CHECKED" | tail -n 2 | head -n 1)
OUT=$(echo "$CHECKED" | tail -n 1)
mkdir -p "$OUT/logs"
echo "== msrun: $NNODES node(s) x $WORKERS worker(s), node rank $NODE_RANK, master $MASTER_ADDR:$MASTER_PORT," \
     "cluster time-out ${CLUSTER_TIME_OUT}s, bind_core $BIND_CORE, logs in $OUT/logs"
# msrun starts its scheduler on every node that owns MASTER_ADDR. Only node 0 may: a second one (nodes
# sharing a host, as in a rehearsal on localhost) takes the port or fails, and fails its node's run.
MSRUN=(msrun)
if [ "$NODE_RANK" -gt 0 ]; then
  MSRUN=(python -c 'import sys
from mindspore.parallel.cluster.process_entity import _api
if hasattr(_api, "_is_local_ip"):
    _api._is_local_ip = lambda address: False   # node rank > 0: never the scheduler
from mindspore.parallel.cluster.run import main
sys.exit(main())')
fi
status=0
"${MSRUN[@]}" --worker_num=$((WORKERS * NNODES)) --local_worker_num="$WORKERS" --master_addr="$MASTER_ADDR" \
  --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" --log_dir="$OUT/logs" --join=True \
  --cluster_time_out="$CLUSTER_TIME_OUT" --bind_core="$BIND_CORE" \
  python "$ROOT/train.py" --config "$CONFIG_FILE" --distribute true "$@" || status=$?
if [ $status -ne 0 ]; then
  echo "error: distributed training failed (exit $status); see $OUT/logs/worker_*.log" >&2
  for f in "$OUT"/logs/worker_*.log; do
    [ -f "$f" ] && grep -h "^error:" "$f" | head -n 1 >&2 || true
  done
  exit $status
fi
if [ -f "$OUT/summary.json" ] && [ "$NODE_RANK" = "0" ]; then python -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' < "$OUT/summary.json"; fi
