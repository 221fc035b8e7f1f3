#!/usr/bin/env bash
# The language-model job, end to end on a fresh machine: create .venv, install requirements.txt,
# build a corpus of real English text that ships with Python (the standard library's pydoc topics,
# ~65k words), train a 1024-piece SentencePiece tokenizer on its training split, train a small
# PRepBN LLaMA (configs/quickstart_lm.yaml: RMSNorm -> BN over the first 60% of the steps, BN
# recalibrated at the end) and its RMSNorm twin with the same budget, report both validation
# perplexities, fold the PRepBN model and check that its perplexity is unchanged, generate a few
# lines from a prompt, and print a summary JSON as the very last line.
# Extra arguments go to both train.py runs (--key value).
REQS="requirements.txt"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT=output/quickstart_lm
CONFIG=configs/quickstart_lm.yaml
CORPUS=data/pydoc_topics.jsonl
TOKENIZER=data/pydoc_topics.tokenizer.model
# A fresh run each time; the folder is removed only when it holds the mark this script leaves.
MARK="$OUT/.made-by-quickstart-lm"
if [ -e "$OUT" ] && [ ! -f "$MARK" ]; then
  echo "error: $OUT exists and was not made by scripts/quickstart_lm.sh; move it away and run again" >&2
  exit 2
fi
if [ -f "$MARK" ]; then rm -rf "$OUT"; fi
mkdir -p "$OUT" data && touch "$MARK"
echo "== corpus: Python's pydoc topics -> $CORPUS"
python scripts/make_text_corpus.py --out "$CORPUS"
if [ ! -f "$TOKENIZER" ]; then
  echo "== tokenizer: 1024 pieces trained on the training split -> $TOKENIZER"
  python scripts/train_tokenizer.py --data "$CORPUS" --val_fraction 0.15 --vocab_size 1024 --output "$TOKENIZER"
fi
echo "== train.py: PRepBN LLaMA (output in $OUT/prepbn)"
python train.py --config "$CONFIG" --ckpt_save_dir "$OUT/prepbn" "$@" | grep --line-buffered -v '^{"model"'
echo "== train.py: the RMSNorm twin, same budget (output in $OUT/rmsnorm)"
python train.py --config "$CONFIG" --ckpt_save_dir "$OUT/rmsnorm" --model_kwargs "{vocab_size: 1024, norm: rmsnorm}" \
  --prepbn_fraction none --bn_recalibrate_epochs 0 "$@" | grep --line-buffered -v '^{"model"'
echo "== validate.py: perplexity of the PRepBN model, then of its folded (fused) form"
python validate.py --config "$CONFIG" --ckpt_path "$OUT/prepbn/final.ckpt" | tee "$OUT/validate.json"
python validate.py --config "$CONFIG" --ckpt_path "$OUT/prepbn/final.ckpt" --reparam | tee "$OUT/validate_fused.json"
echo "== generate.py: the fused PRepBN model continues two prompts"
python generate.py --ckpt "$OUT/prepbn/final.ckpt" --tokenizer "$TOKENIZER" --reparam --max_new_tokens 40 \
  --do_sample --temperature 0.7 --top_k 40 --seed 0 \
  --prompt "The for statement is used to" --prompt "An exception is raised when" > "$OUT/generate.txt"
head -n -1 "$OUT/generate.txt"
python - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda name: json.load(open(os.path.join(out, name)))                     # noqa: E731
last = lambda name: json.loads(open(os.path.join(out, name)).read().strip().splitlines()[-1])  # noqa: E731
pre, rms = load("prepbn/summary.json"), load("rmsnorm/summary.json")
val, fused, gen = last("validate.json"), last("validate_fused.json"), last("generate.txt")
keep = ("val_ppl", "best_val_ppl", "final_loss", "steps", "tokens_per_second", "prepbn_lambda",
        "bn_recalibrated_batches", "parameter_digest", "checkpoint")
summary = {
    "model": pre["model"], "train_tokens": pre["train_tokens"], "val_tokens": pre["val_tokens"],
    "tokens_per_step": pre["tokens_per_step"],
    "prepbn": {k: pre[k] for k in keep}, "rmsnorm": {k: rms[k] for k in keep},
    "ppl_ratio_prepbn_over_rmsnorm": pre["val_ppl"] / rms["val_ppl"],
    "validate_ppl": val["perplexity"], "fused_ppl": fused["perplexity"],
    "fused_rel_diff": abs(fused["perplexity"] - val["perplexity"]) / val["perplexity"],
    "generated": gen["texts"],
}
print(json.dumps(summary))
PY
