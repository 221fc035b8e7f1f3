"""SentencePiece tokenizer for the LLaMA models (upstream's ``tokenizer.model``, or any other
SentencePiece model file the user gives; none is bundled).

Encoding follows the LLaMA tokenizer: a bos token first, no eos. Decoding stops at the first eos
and drops bos and pad ids.
"""
import os

from ..errors import ConfigError


class Tokenizer:
    """A SentencePiece model file. Problems (missing file, not a SentencePiece model, a vocabulary
    that does not fit the model) raise :class:`slab_ms.errors.ConfigError` with one line."""

    def __init__(self, path):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ConfigError(f"tokenizer {path}: no such file")
        try:
            import sentencepiece as spm
        except ImportError:
            raise ConfigError("the sentencepiece package is needed for text prompts "
                              "(pip install sentencepiece)") from None
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            ok = self.sp.Load(path)
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with multi-line text
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"tokenizer {path}: not a SentencePiece model ({first})") from None
        if not ok:
            raise ConfigError(f"tokenizer {path}: not a SentencePiece model")

    @property
    def vocab_size(self):
        return self.sp.GetPieceSize()

    @property
    def bos_id(self):
        return self.sp.bos_id()

    @property
    def eos_id(self):
        return self.sp.eos_id()

    @property
    def pad_id(self):
        return self.sp.pad_id()

    def check_vocab(self, model_vocab_size):
        """The tokenizer must have exactly the model's vocabulary size."""
        if self.vocab_size != model_vocab_size:
            raise ConfigError(f"tokenizer {self.path} has {self.vocab_size} pieces but the model's vocabulary is "
                              f"{model_vocab_size}: wrong tokenizer for this checkpoint")
        return self

    def encode(self, text, bos=True):
        ids = self.sp.EncodeAsIds(text)
        return ([self.bos_id] if bos and self.bos_id >= 0 else []) + list(ids)

    def decode(self, ids):
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.bos_id, self.pad_id) or not 0 <= i < self.vocab_size:
                continue
            out.append(i)
        return self.sp.DecodeIds(out)


def load_tokenizer(path, vocab_size=None):
    """:class:`Tokenizer` for ``path``, checked against ``vocab_size`` when given."""
    tok = Tokenizer(path)
    if vocab_size is not None:
        tok.check_vocab(vocab_size)
    return tok
