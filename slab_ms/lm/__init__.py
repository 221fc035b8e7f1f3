"""The language-model pieces around the PRepBN LLaMA (``slab_ms.models.llama``): the SentencePiece
tokenizer and its training, the tokenised text corpus, the causal-LM loss and KV-cache generation.
The training run itself is ``slab_ms.engine.lm_trainer``."""
