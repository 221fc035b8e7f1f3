"""Train a SentencePiece tokenizer for the LLaMA models on the TRAINING split of a text corpus.

The corpus is read and split exactly as training reads it (slab_ms.lm.text_data:
read_documents + split_documents with the same --text_field / --val_fraction), so no val text
leaks into the vocabulary. Each non-empty line of a training document is one sentence.

The model has LLaMA's id layout (unk 0, bos 1, eos 2, no pad), byte fallback (any UTF-8 text
encodes), every character of the corpus (character_coverage 1.0), digits split, and LLaMA's
identity normalisation (no NFKC, whitespace kept: indentation survives a round trip). Training
runs on one thread and is deterministic: the same corpus and flags give a byte-identical model
(checked for bpe and unigram with sentencepiece 0.2.x).

    python scripts/train_tokenizer.py --data corpus.jsonl --vocab_size 1024 --output tok.model

Prints one JSON line {"output", "vocab_size", "documents", "sentences"}; errors print
``error: <message>`` and exit 2.
"""
import argparse
import io
import json
import numbers
import os
import re
import sys

from ..errors import ConfigError
from ..io import atomic_write
from .text_data import read_documents, split_documents

MODEL_TYPES = ("bpe", "unigram")
MAX_SENTENCE_BYTES = 1 << 14   # longer lines are skipped by sentencepiece (its default is 4192)


def _sp_message(e):
    """sentencepiece's error without its source location: 'INTERNAL: src/x.cc(12) [cond] text' -> 'text'."""
    text = " ".join(str(e).split())
    return re.sub(r"^[A-Z_]+: \S+\(\d+\) \[.*?\] ", "", text) or type(e).__name__


def train_tokenizer(docs_or_path, vocab_size, output, text_field="text", val_fraction=0.05, model_type="bpe",
                    force=False):
    """Train and write ``output``. ``docs_or_path``: a corpus path (its training split is used) or a
    list of document strings (used as they are). Returns the summary dict the CLI prints; raises
    ConfigError for user mistakes."""
    import sentencepiece as spm

    output = os.fspath(output)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if os.path.exists(output) and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    if isinstance(docs_or_path, (str, os.PathLike)):
        docs, _val = split_documents(read_documents(docs_or_path, text_field), val_fraction, docs_or_path)
    else:
        docs = list(docs_or_path)
        if not all(isinstance(d, str) for d in docs):
            raise ConfigError("train_tokenizer: documents must be strings")
    sentences = [line for doc in docs for line in doc.split("\n") if line.strip()]
    if not sentences:
        raise ConfigError("no text to train the tokenizer on")

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=int(vocab_size), model_type=model_type,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
            split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        raise ConfigError(f"sentencepiece cannot train a {vocab_size}-piece {model_type} model on this text: "
                          f"{_sp_message(e)}") from None

    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with atomic_write(output, prefix=".tokenizer-", suffix=".part", mode=0o644) as tmp, open(tmp, "wb") as f:
            f.write(model.getvalue())
    except OSError as e:
        raise ConfigError(f"cannot write {output} ({e.strerror or e})") from None
    return {"output": output, "vocab_size": vocab_size, "documents": len(docs), "sentences": len(sentences)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="scripts/train_tokenizer.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="corpus: a .txt file, a folder of .txt files or a .jsonl file")
    p.add_argument("--text_field", default="text", help="JSON lines: the field holding the text")
    p.add_argument("--val_fraction", type=float, default=0.05, help="as in the training config (held out)")
    p.add_argument("--vocab_size", type=int, required=True)
    p.add_argument("--output", required=True, help="the .model file to write")
    p.add_argument("--model_type", choices=MODEL_TYPES, default="bpe")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    args = p.parse_args(argv)
    try:
        summary = train_tokenizer(args.data, args.vocab_size, args.output, text_field=args.text_field,
                                  val_fraction=args.val_fraction, model_type=args.model_type, force=args.force)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0

