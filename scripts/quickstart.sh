#!/usr/bin/env bash
# The main job, end to end on a fresh machine: create .venv, install requirements.txt, build a
# real-image dataset (scikit-learn's handwritten digits), train a small SLAB model on it
# (configs/quickstart_digits.yaml: SLA + PRepBN, schedule finishing at 60% of the run, BN
# recalibrated at the end), validate it, fuse it (RepBN folded into the linear layers), export
# the fused model to MindIR with a dynamic batch, run it on the validation images with
# infer.py (through MindSpore Lite's C++ runtime when scripts/get_lite.sh can build it), and print
# the training summary JSON (plus a "deploy" record) as the very last line.
# Extra arguments go to train.py (--key value). The output goes to output/quickstart under the
# repository root, or to QUICKSTART_OUT when set (the tests give it a folder of their own); OUT
# from the caller's environment is ignored.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${QUICKSTART_OUT:-output/quickstart}"
CONFIG=configs/quickstart_digits.yaml
# A fresh run each time (continue one with train.py --resume auto instead). The folder is removed
# only when it holds the mark this script leaves: a folder it did not create is never deleted.
# Checked before the environment is set up, so a refusal costs nothing.
MARK="$OUT/.made-by-quickstart"
if [ -e "$OUT" ] && [ ! -f "$MARK" ]; then
  echo "error: $OUT exists and was not made by scripts/quickstart.sh; move it away and run again" >&2
  exit 2
fi
REQS="requirements.txt"
source scripts/_venv.sh
if [ -f "$MARK" ]; then rm -rf "$OUT"; fi
python scripts/make_digits.py --out data/digits
mkdir -p "$OUT" && touch "$MARK"
echo "== train.py --config $CONFIG (output in $OUT)"
python train.py --config "$CONFIG" --ckpt_save_dir "$OUT" "$@" | grep --line-buffered -v '^{"model"'
echo "== validate.py on $OUT/final.ckpt"
python validate.py --config "$CONFIG" --ckpt_path "$OUT/final.ckpt" | tee "$OUT/validate.json"
echo "== export.py --reparam: fused model -> $OUT/slab_digits.mindir (dynamic batch)"
python export.py --config "$CONFIG" --ckpt_path "$OUT/final.ckpt" --reparam --dynamic-batch --verify \
  --output "$OUT/slab_digits.mindir" --force | tee "$OUT/export.json"
echo "== infer.py on a few validation images, then on all of data/digits/val"
python infer.py --model_file "$OUT/slab_digits.mindir" --images data/digits/val/3/0003.png | sed -n '1,2p'
python infer.py --model_file "$OUT/slab_digits.mindir" --images data/digits/val/5 | sed -n '2,3p'
# MindSpore Lite as users deploy it: Lite 2.0.0's C++ runtime (scripts/get_lite.sh fetches and builds it)
# on the MindIR form it reads; MindSpore's own runtime when that cannot be had (no compiler, no network).
if bash scripts/get_lite.sh > "$OUT/get_lite.log" 2>&1; then
  echo "== export.py --mindir-compat 2.0, infer.py --runtime lite-cpp on all of data/digits/val"
  python export.py --config "$CONFIG" --ckpt_path "$OUT/final.ckpt" --reparam --dynamic-batch --mindir-compat 2.0 \
    --output "$OUT/slab_digits_lite.mindir" --force > /dev/null
  python infer.py --model_file "$OUT/slab_digits_lite.mindir" --images data/digits/val --runtime lite-cpp \
    --batch_size 128 --quiet > "$OUT/infer.json"
else
  echo "== MindSpore Lite runtime not available ($(tail -n 1 "$OUT/get_lite.log")): infer.py with MindSpore's runtime"
  python infer.py --model_file "$OUT/slab_digits.mindir" --images data/digits/val --quiet > "$OUT/infer.json"
fi
python - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
summary = json.load(open(os.path.join(out, "summary.json")))
val = json.load(open(os.path.join(out, "validate.json")))
exp = json.load(open(os.path.join(out, "export.json")))
inf = json.loads(open(os.path.join(out, "infer.json")).read().strip().splitlines()[-1])
summary["deploy"] = {"mindir": exp["output"], "norms_left": exp["norms_left"],
                     "export_max_abs_diff": exp["verify_max_abs_diff"], "validate_top1": val["top1"],
                     "fused_mindir_top1": inf["folder_top1"], "runtime": inf["runtime"]}
print(json.dumps(summary))
PY
