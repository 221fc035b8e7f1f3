#!/usr/bin/env bash
# The main job, end to end on a fresh machine: create .venv, install, build slab_swin_tiny in
# GRAPH_MODE, then convert a PyTorch checkpoint to MindSpore and back with --verify.
# The last line of output is a JSON summary.
REQS="requirements.txt requirements-test.txt"   # torch: the PyTorch side of the round trip
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${OUT:-output/quickstart}"
mkdir -p "$OUT"
exec python scripts/quickstart_demo.py --out "$OUT"
