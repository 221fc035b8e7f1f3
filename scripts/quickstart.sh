#!/usr/bin/env bash
# The main job, end to end on a fresh machine: create .venv, install requirements.txt, build a
# real-image dataset (scikit-learn's handwritten digits), train a small SLAB model on it
# (configs/quickstart_digits.yaml: SLA + PRepBN, schedule finishing at 60% of the run, BN
# recalibrated at the end), validate the final checkpoint with validate.py, and print the
# training summary JSON as the very last line. Extra arguments go to train.py (--key value).
REQS="requirements.txt"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${OUT:-output/quickstart}"
CONFIG=configs/quickstart_digits.yaml
python scripts/make_digits.py --out data/digits
rm -rf "$OUT"     # a fresh run each time (continue a run with train.py --resume auto instead)
echo "== train.py --config $CONFIG (output in $OUT)"
python train.py --config "$CONFIG" --ckpt_save_dir "$OUT" "$@" | grep --line-buffered -v '^{"model"'
echo "== validate.py on $OUT/final.ckpt"
python validate.py --config "$CONFIG" --ckpt_path "$OUT/final.ckpt"
python -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$OUT/summary.json"
