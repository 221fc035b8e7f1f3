#!/usr/bin/env bash
# Training on one device: bash scripts/run_standalone.sh CONFIG [train.py overrides ...]
# Uses .venv when it exists (created by scripts/quickstart.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"   # paths stay relative to the caller's directory
if [ $# -lt 1 ]; then echo "usage: bash scripts/run_standalone.sh CONFIG [--key value ...]" >&2; exit 2; fi
if [ -x "$ROOT/.venv/bin/python" ]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
CONFIG="$1"; shift
exec python "$ROOT/train.py" --config "$CONFIG" "$@"
