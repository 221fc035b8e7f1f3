"""Train a SentencePiece tokenizer for the LLaMA models on the training split of a text corpus
(slab_ms.lm.tokenizer_training; needs the package installed, as the scripts do):

    python scripts/train_tokenizer.py --data corpus.jsonl --vocab_size 1024 --output tok.model
"""
import sys

from slab_ms.lm.tokenizer_training import main

if __name__ == "__main__":
    sys.exit(main())
