"""Text data for training a LLaMA language model: corpus -> SentencePiece tokens -> fixed-length blocks.

Corpus formats (:func:`read_documents`):

* a text file (``.txt`` or any other name that does not end in ``.jsonl`` / ``.json``): documents are
  separated by one or more blank lines (whitespace-only lines count as blank); a document's lines are
  joined with ``"\\n"`` and the result stripped;
* a folder: every ``*.txt`` file under it (recursive, sorted by relative path), each read as above;
  other files are ignored;
* JSON lines (``.jsonl`` / ``.json``): one JSON object per non-empty line, the document is
  ``obj[text_field]``. Documents with no non-whitespace text are dropped.

Files are UTF-8 (a leading byte-order mark is dropped; ``\\r\\n`` and ``\\r`` line ends read as ``\\n``).

Split (:func:`split_documents`): with ``n = max(2, round(1 / val_fraction))``, document ``i`` goes to
val when ``i % n == n - 1``, else to train; no randomness, so the tokenizer script
(``scripts/train_tokenizer.py``) trains on exactly the documents training sees.

Token streams: each split is tokenised once into ONE flat 1-D array: every document is
``tok.encode(doc, bos=True) + [eos]``, concatenated in document order. The array is cut into
blocks of ``seq_length`` tokens only when batches are read (:class:`TokenStream`), so the block
length (and the batch size, the number of ranks, the shuffling) can change between runs without
re-tokenising; a block may span a document boundary, which the bos/eos tokens mark.

Cache: ``<cache>/<key>.train.npy``, ``<key>.val.npy`` and ``<key>.json`` (the meta data: token and
document counts per split, tokenizer, vocabulary size, format version). ``<cache>`` is by default a
folder beside the data, ``<corpus>.slab_tokens``, or the ``token_cache_dir`` config key.
``key`` is the first 16 hex digits of :func:`fingerprint`: a sha256 over :data:`FORMAT_VERSION`,
the tokenizer file's bytes, ``text_field``, ``val_fraction`` and every corpus file's relative path
and bytes, so any change to one of them builds a new cache. A second start hashes the corpus (no
tokenising) and opens the arrays memory-mapped. Files are written to a temporary file in the cache
folder and renamed into place (``.npy`` files first, the ``.json`` last, and a key counts as cached
only when its ``.json`` exists and everything loads), so a crash never leaves a partial cache and two
processes building at once both end with valid files. After a build, the cache files of other keys
in that folder (names ``<16 hex>.train.npy`` / ``.val.npy`` / ``.json``, those this module writes)
are removed; nothing else is touched.

No MindSpore here: this module is numpy and sentencepiece only.
"""
import hashlib
import json
import math
import numbers
import os
import re

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write
from .tokenizer import load_tokenizer

FORMAT_VERSION = 1

SPLITS = ("train", "val")
_JSON_LINES = (".jsonl", ".json")
_CACHE_NAME = re.compile(r"[0-9a-f]{16}\.(train\.npy|val\.npy|json)")
_TMP_PREFIX = ".slab-tokens-tmp-"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------------- corpus

def _is_json_lines(path):
    return os.path.isfile(path) and path.lower().endswith(_JSON_LINES)


def corpus_files(path):
    """The files of a corpus: ``[path]`` for a file, every ``*.txt`` under a folder (recursive,
    sorted by relative path). ConfigError for a missing path or a folder without a ``.txt`` file."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"corpus {path}: no such file or folder")
    found = []
    for root, _dirs, names in os.walk(path):
        for name in names:
            if name.endswith(".txt"):
                full = os.path.join(root, name)
                if os.path.isfile(full):
                    found.append((os.path.relpath(full, path), full))
    if not found:
        raise ConfigError(f"corpus {path} is a folder with no .txt file")
    return [full for _rel, full in sorted(found)]


def _rel_name(path, file):
    """How a corpus file is named in the fingerprint: relative to the corpus folder, or its basename."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return os.path.relpath(file, path).replace(os.sep, "/")
    return os.path.basename(file)


def _read_text(file):
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"corpus file {file}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"corpus file {file} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _text_documents(file):
    docs, cur = [], []
    for line in _read_text(file).split("\n"):
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur).strip())
            cur = []
    if cur:
        docs.append("\n".join(cur).strip())
    return docs


def _json_documents(file, text_field):
    docs = []
    for n, line in enumerate(_read_text(file).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"corpus {file}, line {n}: not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"corpus {file}, line {n}: expected a JSON object, got {type(obj).__name__}")
        if text_field not in obj:
            keys = ", ".join(list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
            raise ConfigError(f"corpus {file}, line {n}: no {text_field!r} field (keys: {keys or 'none'}); "
                              f"set text_field")
        text = obj[text_field]
        if not isinstance(text, str):
            raise ConfigError(f"corpus {file}, line {n}: field {text_field!r} is a {type(text).__name__}, "
                              f"not a string")
        if text.strip():
            docs.append(text)
    return docs


def read_documents(path, text_field="text"):
    """The documents of a corpus (see the module docstring for the formats), in corpus order."""
    path = os.fspath(path)
    files = corpus_files(path)
    if _is_json_lines(path):
        docs = _json_documents(path, text_field)
    else:
        docs = [d for f in files for d in _text_documents(f)]
    if not docs:
        raise ConfigError(f"corpus {path} is empty (no text)")
    return docs


def _check_val_fraction(val_fraction):
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not math.isfinite(val_fraction) or not 0 < val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be a number in (0, 0.5], got {val_fraction!r}")
    return max(2, round(1 / float(val_fraction)))


def split_documents(docs, val_fraction, path=None):
    """``(train, val)``: document ``i`` goes to val when ``i % n == n - 1`` with
    ``n = max(2, round(1 / val_fraction))``, else to train. ``path`` only names the corpus in errors."""
    n = _check_val_fraction(val_fraction)
    train = [d for i, d in enumerate(docs) if i % n != n - 1]
    val = [d for i, d in enumerate(docs) if i % n == n - 1]
    if not train or not val:
        name = f"corpus {os.fspath(path)}" if path is not None else "the corpus"
        raise ConfigError(f"{name} has {len(docs)} documents, too few for val_fraction {val_fraction}: every "
                          f"{n}th document goes to val, so at least {n} are needed (add text or raise val_fraction)")
    return train, val


# ---------------------------------------------------------------------------------------------------- cache

def _hash_field(h, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _file_digest(file, what):
    h = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except OSError as e:
        raise ConfigError(f"{what} {file}: cannot read it ({e.strerror or e})") from None
    return h.digest()


def fingerprint(path, tokenizer_path, text_field, val_fraction):
    """Hex sha256 over the format version, the tokenizer file's bytes, ``text_field``,
    ``val_fraction`` and each corpus file's relative path and bytes (read in 1 MiB chunks).
    Every field is length-prefixed (file contents enter as their own sha256), so no two
    different inputs hash the same stream."""
    path = os.fspath(path)
    h = hashlib.sha256()
    _hash_field(h, f"slab_tokens {FORMAT_VERSION}")
    _hash_field(h, _file_digest(os.fspath(tokenizer_path), "tokenizer"))
    _hash_field(h, str(text_field))
    _hash_field(h, repr(float(val_fraction)))
    files = corpus_files(path)
    _hash_field(h, str(len(files)))
    for f in files:
        _hash_field(h, _rel_name(path, f))
        _hash_field(h, _file_digest(f, "corpus file"))
    return h.hexdigest()


def cache_dir_for(path, cache_dir=""):
    """The token cache folder: ``cache_dir`` when given, else ``<path>.slab_tokens`` beside the data."""
    if cache_dir:
        return os.fspath(cache_dir)
    path = os.fspath(path)
    seps = os.sep + (os.altsep or "")
    return (path.rstrip(seps) or path) + ".slab_tokens"


def _cache_paths(cache, key):
    return {"train": os.path.join(cache, f"{key}.train.npy"), "val": os.path.join(cache, f"{key}.val.npy"),
            "meta": os.path.join(cache, f"{key}.json")}


def _load_cached(cache, key, tok, log):
    """``(meta, {split: memmap})`` for a complete cache of ``key``, else None."""
    paths = _cache_paths(cache, key)
    if not os.path.isfile(paths["meta"]):
        return None
    try:
        with open(paths["meta"], encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format_version") != FORMAT_VERSION or meta.get("key") != key:
            raise ValueError("meta data of another format or key")
        if meta.get("vocab_size") != tok.vocab_size:
            raise ValueError(f"built for {meta.get('vocab_size')} pieces, tokenizer has {tok.vocab_size}")
        arrays = {}
        for s in SPLITS:
            a = np.load(paths[s], mmap_mode="r", allow_pickle=False)
            if a.ndim != 1 or a.dtype not in (np.uint16, np.int32) or len(a) != meta["splits"][s]["tokens"]:
                raise ValueError(f"{s} tokens do not match the meta data")
            arrays[s] = a
        return meta, arrays
    except Exception as e:  # any damage means: build again (the files are replaced atomically)
        log(f"token cache {paths['meta']} unusable ({type(e).__name__}: {e}); rebuilding")
        return None


def _cache_error(cache, e):
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return ConfigError(f"token cache folder {cache} cannot be written ({reason}); "
                       f"set the token_cache_dir config key to a writable folder")


def _atomic_write(final, write, cache):
    """Write ``final`` through ``write(fileobj)`` into a temporary file beside it, then rename."""
    try:
        with atomic_write(final, prefix=_TMP_PREFIX, suffix=".part", fsync=True, mode=0o644) as tmp, \
                open(tmp, "wb") as f:
            write(f)
    except OSError as e:
        raise _cache_error(cache, e) from None


def _remove_other_keys(cache, key, log):
    removed = 0
    try:
        names = os.listdir(cache)
    except OSError:
        return
    for name in names:
        if _CACHE_NAME.fullmatch(name) and not name.startswith(key + "."):
            try:
                os.remove(os.path.join(cache, name))
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                log(f"token cache: could not remove old {name} ({e.strerror or e})")
    if removed:
        log(f"token cache: removed {removed} file(s) of older keys from {cache}")


def _tokenise(docs, tok, dtype):
    """One flat array: each document encoded with bos first and eos last."""
    eos = tok.eos_id
    parts = [np.asarray(tok.encode(doc, bos=True) + [eos], dtype=dtype) for doc in docs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def build_or_load(path, tokenizer_path, text_field="text", val_fraction=0.05, cache_dir="", vocab_size=None,
                  log=print):
    """Token streams of a corpus, from the cache when it holds this corpus + tokenizer + split, else
    tokenised and cached. Returns ``{"train": TokenStream, "val": TokenStream, "cache": folder,
    "built": bool, "key": key16, "meta": dict}``."""
    path = os.fspath(path)
    tokenizer_path = os.fspath(tokenizer_path)
    _check_val_fraction(val_fraction)
    tok = load_tokenizer(tokenizer_path, vocab_size)
    if tok.eos_id < 0:
        raise ConfigError(f"tokenizer {tokenizer_path} has no eos piece: documents could not be separated")
    pad = tok.pad_id if tok.pad_id >= 0 else tok.eos_id   # padding is masked; LLaMA tokenizers have no pad
    cache = cache_dir_for(path, cache_dir)
    key = fingerprint(path, tokenizer_path, text_field, val_fraction)[:16]

    loaded = _load_cached(cache, key, tok, log)
    if loaded is not None:
        meta, arrays = loaded
        log(f"token cache: {cache}/{key} (train {meta['splits']['train']['tokens']} tokens, "
            f"val {meta['splits']['val']['tokens']})")
        return {"train": TokenStream(arrays["train"], pad), "val": TokenStream(arrays["val"], pad),
                "cache": cache, "built": False, "key": key, "meta": meta}

    docs = read_documents(path, text_field)
    split = dict(zip(SPLITS, split_documents(docs, val_fraction, path)))
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise _cache_error(cache, e) from None
    if not os.path.isdir(cache):
        raise ConfigError(f"token cache folder {cache} is not a folder; set the token_cache_dir config key")
    log(f"token cache: tokenising {path} ({len(docs)} documents) into {cache}/{key}")
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.int32
    paths = _cache_paths(cache, key)
    arrays = {}
    for s in SPLITS:
        arrays[s] = _tokenise(split[s], tok, dtype)
        _atomic_write(paths[s], lambda f, a=arrays[s]: np.save(f, a, allow_pickle=False), cache)
    meta = {"format_version": FORMAT_VERSION, "key": key, "corpus": os.path.abspath(path),
            "tokenizer": os.path.abspath(tokenizer_path), "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id, "eos_id": tok.eos_id, "text_field": text_field,
            "val_fraction": float(val_fraction), "dtype": np.dtype(dtype).name,
            "splits": {s: {"documents": len(split[s]), "tokens": int(len(arrays[s]))} for s in SPLITS}}
    _atomic_write(paths["meta"], lambda f: f.write((json.dumps(meta, indent=1) + "\n").encode("utf-8")), cache)
    _remove_other_keys(cache, key, log)
    for s in SPLITS:   # hand out the memory-mapped files (the in-memory copy if another process removed them)
        try:
            arrays[s] = np.load(paths[s], mmap_mode="r", allow_pickle=False)
        except OSError:
            pass
    log(f"token cache: wrote train {meta['splits']['train']['tokens']} tokens, "
        f"val {meta['splits']['val']['tokens']}")
    return {"train": TokenStream(arrays["train"], pad), "val": TokenStream(arrays["val"], pad),
            "cache": cache, "built": True, "key": key, "meta": meta}


# ---------------------------------------------------------------------------------------------------- blocks

def _int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo \
            or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_seq_length(seq_length, max_positions):
    """ConfigError unless ``2 <= seq_length <= max_positions``."""
    if isinstance(seq_length, bool) or not isinstance(seq_length, numbers.Integral):
        raise ConfigError(f"seq_length must be an integer, got {seq_length!r}")
    if seq_length < 2:
        raise ConfigError(f"seq_length {seq_length} is too short: a block needs at least 2 tokens "
                          f"(max_positions {max_positions})")
    if seq_length > max_positions:
        raise ConfigError(f"seq_length {seq_length} is over the model's max_positions {max_positions}")
    return int(seq_length)


class TokenStream:
    """A 1-D token array (possibly a memmap) cut into blocks of ``seq_length`` tokens; the last block
    is padded with ``pad_id`` (mask 0 there). Blocks are read only when a batch asks for them."""

    def __init__(self, tokens, pad_id=0):
        tokens = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
        if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
            raise ValueError(f"TokenStream needs a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
        self.tokens = tokens
        self.pad_id = int(pad_id)

    @property
    def n_tokens(self):
        return int(self.tokens.shape[0])

    def num_blocks(self, seq_length):
        seq_length = _int("seq_length", seq_length, 1)
        return -(-self.n_tokens // seq_length)

    def _rows(self, idx, seq_length):
        """``(ids, mask)`` int32 ``(len(idx), T)`` for block indices ``idx``."""
        idx = np.asarray(idx, dtype=np.int64)
        t = seq_length
        ids = np.full((len(idx), t), self.pad_id, np.int32)
        mask = np.zeros((len(idx), t), np.int32)
        n_full = self.n_tokens // t
        full = idx < n_full
        if full.any():
            ids[full] = self.tokens[:n_full * t].reshape(n_full, t)[idx[full]]   # reads those rows only
            mask[full] = 1
        for r in np.flatnonzero(~full):   # the one partial last block
            chunk = self.tokens[idx[r] * t:(idx[r] + 1) * t]
            ids[r, :len(chunk)] = chunk
            mask[r, :len(chunk)] = 1
        return ids, mask

    def block(self, i, seq_length):
        """Block ``i``: ``(ids int32 [T], mask int32 [T])``."""
        seq_length = _int("seq_length", seq_length, 1)
        n = self.num_blocks(seq_length)
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < n:
            raise IndexError(f"block {i!r} out of range: {n} blocks of {seq_length} tokens")
        ids, mask = self._rows([int(i)], seq_length)
        return ids[0], mask[0]

    def num_batches(self, seq_length, batch_size, world=1):
        """Training batches per rank per epoch (the remainder of blocks is dropped, every rank equal)."""
        batch_size = _int("batch_size", batch_size, 1)
        world = _int("world", world, 1)
        return self.num_blocks(seq_length) // (batch_size * world)

    def train_batches(self, seq_length, batch_size, epoch, seed, rank=0, world=1, shuffle=True, skip=0):
        """Generator of ``(ids, mask)`` int32 ``(B, T)``: the epoch's block order (a permutation seeded by
        ``(seed, epoch)``, or in order without ``shuffle``), cut to ``num_batches * B * world`` blocks, rank
        ``r`` taking ``order[r::world]`` in batches of ``B``; the first ``skip`` batches of this rank are
        skipped without reading them (resume mid-epoch). Arguments are checked on the call."""
        n_batches = self.num_batches(seq_length, batch_size, world)
        rank = _int("rank", rank, 0, world - 1)
        epoch, seed, skip = _int("epoch", epoch, 0), _int("seed", seed, 0), _int("skip", skip, 0)
        n_blocks = self.num_blocks(seq_length)
        order = np.random.default_rng([seed, epoch]).permutation(n_blocks) if shuffle else np.arange(n_blocks)
        mine = order[:n_batches * batch_size * world][rank::world]

        def gen():
            for b in range(skip, n_batches):
                yield self._rows(mine[b * batch_size:(b + 1) * batch_size], seq_length)
        return gen()

    def eval_batches(self, seq_length, batch_size, rank=0, world=1):
        """Generator of ``(ids, mask)`` int32 ``(B, T)`` over the blocks ``i`` with ``i % world == rank``,
        in order; the last batch is filled up with rows of pad ids and mask 0 (a fixed shape)."""
        batch_size = _int("batch_size", batch_size, 1)
        world = _int("world", world, 1)
        rank = _int("rank", rank, 0, world - 1)
        mine = np.arange(rank, self.num_blocks(seq_length), world)

        def gen():
            for start in range(0, len(mine), batch_size):
                ids, mask = self._rows(mine[start:start + batch_size], seq_length)
                if len(ids) < batch_size:
                    fill = batch_size - len(ids)
                    ids = np.concatenate([ids, np.full((fill, seq_length), self.pad_id, np.int32)])
                    mask = np.concatenate([mask, np.zeros((fill, seq_length), np.int32)])
                yield ids, mask
        return gen()
