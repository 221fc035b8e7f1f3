"""The LLaMA text pipeline (slab_ms.lm.text_data) on real English text (Python's own pydoc
topics): corpus formats, the deterministic split, the token cache (built once, reused, rebuilt
when the corpus or the tokenizer changes, old keys removed), blocks and batches sharded over
ranks, the one-line errors, and the scripts train_tokenizer.py and make_text_corpus.py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pydoc_data.topics import topics

from conftest import ROOT, load_script
from slab_ms.lm import text_data as td
from slab_ms.errors import ConfigError
from slab_ms.lm.tokenizer import Tokenizer, load_tokenizer
from slab_ms.lm.tokenizer_training import train_tokenizer

SCRIPTS = os.path.join(ROOT, "scripts")
# Ten real documents, a few thousand words: enough for a 512-piece tokenizer, quick to train.
TOPIC_NAMES = ["assert", "break", "continue", "del", "global", "if", "pass", "return", "while", "with"]

make_text_corpus = load_script("make_text_corpus")


def one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


def write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({field: d, "title": f"doc{i}"}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def docs():
    return [topics[name].strip() for name in TOPIC_NAMES]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, docs):
    """Two tokenizers trained on the real text: 512 and 600 pieces."""
    folder = tmp_path_factory.mktemp("tok")
    out = {}
    for vocab in (512, 600):
        path = str(folder / f"tok{vocab}.model")
        summary = train_tokenizer(docs, vocab, path)
        assert summary["vocab_size"] == vocab and summary["documents"] == len(docs)
        out[vocab] = path
    return out


@pytest.fixture
def corpus(tmp_path, docs):
    """The documents as JSON lines in a fresh folder (its cache goes beside it)."""
    return write_jsonl(tmp_path / "corpus.jsonl", docs)


# ------------------------------------------------------------------------------------------ corpus formats

def test_text_file_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffFirst line\n  second line  \n\n \t \n\n\n  Zweite Straße\r\n\r\nthird\n  indented\n\n"
                     .encode("utf-8"))
    assert td.read_documents(str(path)) == ["First line\n  second line", "Zweite Straße", "third\n  indented"]
    assert td.corpus_files(str(path)) == [str(path)]


def test_folder_reads_every_txt_in_relative_path_order(tmp_path):
    root = tmp_path / "books"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b.txt").write_text("from b\n")
    (root / "a.txt").write_text("from a.txt\n\nsecond of a.txt\n")
    (root / "a" / "x.txt").write_text("from a/x\n")
    (root / "a" / "deep" / "y.txt").write_text("\n\nfrom a/deep/y\n")
    (root / "notes.md").write_text("ignored\n")
    (root / "data.jsonl").write_text('{"text": "ignored"}\n')
    rel = [os.path.relpath(f, root) for f in td.corpus_files(str(root))]
    assert rel == ["a.txt", "a/deep/y.txt", "a/x.txt", "b.txt"]
    assert td.read_documents(str(root) + "/") == ["from a.txt", "second of a.txt", "from a/deep/y", "from a/x",
                                                 "from b"]


def test_jsonl_documents_use_the_text_field(tmp_path, docs):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"body": d, "n": i}) for i, d in enumerate(docs[:3])]
    path.write_text(lines[0] + "\n\n   \n" + lines[1] + "\n" + json.dumps({"body": "  "}) + "\n" + lines[2])
    assert td.read_documents(str(path), text_field="body") == docs[:3]   # the whitespace-only one is dropped
    path2 = tmp_path / "c.json"
    path2.write_text(lines[0] + "\n")
    assert td.read_documents(str(path2), text_field="body") == docs[:1]


@pytest.mark.parametrize("line, expect", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    ('{"title": "x"}', "line 2: no 'text' field (keys: title)"),
    ('{"text": 3}', "line 2: field 'text' is a int, not a string"),
])
def test_bad_jsonl_line_is_one_line_error_naming_file_and_line(tmp_path, line, expect):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ConfigError) as e:
        td.read_documents(str(path))
    assert str(path) in one_line(e) and expect in str(e.value)


def test_missing_empty_and_undecodable_corpus_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        td.read_documents(str(tmp_path / "nope.txt"))
    assert "no such file or folder" in one_line(e)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "empty_dir" / "x.md").write_text("text\n")
    with pytest.raises(ConfigError) as e:
        td.corpus_files(str(tmp_path / "empty_dir"))
    assert "no .txt file" in one_line(e)
    (tmp_path / "blank.txt").write_text("\n  \n\t\n")
    with pytest.raises(ConfigError) as e:
        td.read_documents(str(tmp_path / "blank.txt"))
    assert one_line(e) == f"corpus {tmp_path / 'blank.txt'} is empty (no text)"
    (tmp_path / "latin1.txt").write_bytes("Stra\u00dfe\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        td.read_documents(str(tmp_path / "latin1.txt"))
    assert "latin1.txt is not UTF-8" in one_line(e)


# ------------------------------------------------------------------------------------------ split

def test_split_is_deterministic_disjoint_and_covers():
    docs = [f"doc {i}" for i in range(45)]
    train, val = td.split_documents(docs, 0.1)
    assert (train, val) == td.split_documents(list(docs), 0.1)
    assert val == [f"doc {i}" for i in (9, 19, 29, 39)]
    assert sorted(train + val) == sorted(docs) and not set(train) & set(val)
    assert td.split_documents(docs, 0.5)[1] == docs[1::2]
    assert len(td.split_documents(docs, 0.3)[1]) == 15   # n = round(1 / 0.3) = 3


def test_split_errors():
    with pytest.raises(ConfigError) as e:
        td.split_documents(["a"] * 19, 0.05, path="c.txt")
    assert one_line(e).startswith("corpus c.txt has 19 documents, too few for val_fraction 0.05: ")
    for bad in (0, 0.6, -0.1, float("nan"), True, "0.1"):
        with pytest.raises(ConfigError):
            td.split_documents(["a"] * 10, bad)


# ------------------------------------------------------------------------------------------ cache

def _decode_docs(stream, tok):
    """The documents back from a token stream: each bos ... eos."""
    tokens = np.asarray(stream.tokens)
    ends = np.flatnonzero(tokens == tok.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert ends[-1] == len(tokens) - 1
    assert (tokens[starts] == tok.bos_id).all()
    return [tok.decode(tokens[s:e]) for s, e in zip(starts, ends)]


def test_build_then_reuse_without_tokenising(corpus, docs, tokenizers, monkeypatch):
    tok = load_tokenizer(tokenizers[512])
    logs = []
    first = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=logs.append)
    assert first["built"] and first["cache"] == corpus + ".slab_tokens"
    assert first["key"] == td.fingerprint(corpus, tokenizers[512], "text", 0.2)[:16]
    assert sorted(os.listdir(first["cache"])) == [first["key"] + s for s in (".json", ".train.npy", ".val.npy")]
    train_docs, val_docs = td.split_documents(docs, 0.2)
    assert _decode_docs(first["train"], tok) == train_docs      # bos doc eos, in order, round trip
    assert _decode_docs(first["val"], tok) == val_docs
    assert first["train"].tokens.dtype == np.uint16
    meta = json.load(open(os.path.join(first["cache"], first["key"] + ".json")))
    assert meta["splits"]["val"] == {"documents": 2, "tokens": first["val"].n_tokens}
    assert meta["vocab_size"] == 512 and meta["format_version"] == td.FORMAT_VERSION

    def refuse(*a, **k):
        raise AssertionError("tokenised again")
    monkeypatch.setattr(td, "read_documents", refuse)
    monkeypatch.setattr(Tokenizer, "encode", refuse)
    second = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=logs.append)
    assert not second["built"] and second["key"] == first["key"]
    assert isinstance(second["train"].tokens, np.memmap)
    for s in ("train", "val"):
        np.testing.assert_array_equal(second[s].tokens, first[s].tokens)


def test_rebuilt_when_corpus_or_tokenizer_changes_and_old_keys_removed(corpus, docs, tokenizers):
    first = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=lambda m: None)
    cache = first["cache"]
    keep = ["notes.txt", "0123456789abcdef.npy", "0123456789ABCDEF.json", "x0123456789abcdef.json"]
    for name in keep:
        open(os.path.join(cache, name), "w").write("not ours")
    with open(corpus, "a") as f:
        f.write(json.dumps({"text": topics["import"]}) + "\n")
    second = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=lambda m: None)
    assert second["built"] and second["key"] != first["key"]
    assert second["train"].n_tokens > first["train"].n_tokens
    third = td.build_or_load(corpus, tokenizers[600], val_fraction=0.2, log=lambda m: None)
    assert third["built"] and third["key"] not in (first["key"], second["key"])
    assert third["meta"]["vocab_size"] == 600
    ours = [third["key"] + s for s in (".json", ".train.npy", ".val.npy")]
    assert sorted(os.listdir(cache)) == sorted(ours + keep)
    assert not td.build_or_load(corpus, tokenizers[600], val_fraction=0.2, log=lambda m: None)["built"]
    # Another split is another key too.
    assert td.build_or_load(corpus, tokenizers[600], val_fraction=0.25, log=lambda m: None)["built"]


def test_damaged_or_incomplete_cache_is_rebuilt(corpus, tokenizers):
    first = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=lambda m: None)
    train_file = os.path.join(first["cache"], first["key"] + ".train.npy")
    with open(train_file, "r+b") as f:
        f.truncate(100)
    again = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=lambda m: None)
    assert again["built"] and again["train"].n_tokens == first["train"].n_tokens
    os.remove(os.path.join(first["cache"], first["key"] + ".json"))   # .npy without .json: not cached
    assert td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, log=lambda m: None)["built"]
    assert not any(n.startswith(".") for n in os.listdir(first["cache"]))   # no temporary files left


def test_fingerprint_follows_relative_paths_and_content(tmp_path, tokenizers):
    root = tmp_path / "a" / "books"
    root.mkdir(parents=True)
    (root / "one.txt").write_text("first\n")
    (root / "two.txt").write_text("second\n")
    fp = td.fingerprint(str(root), tokenizers[512], "text", 0.05)
    assert len(fp) == 64 and fp == td.fingerprint(str(root) + "/", tokenizers[512], "text", 0.05)
    os.rename(tmp_path / "a", tmp_path / "moved")   # the corpus moved: same key
    moved = str(tmp_path / "moved" / "books")
    assert td.fingerprint(moved, tokenizers[512], "text", 0.05) == fp
    os.rename(os.path.join(moved, "two.txt"), os.path.join(moved, "zwei.txt"))   # same bytes, same order
    renamed = td.fingerprint(moved, tokenizers[512], "text", 0.05)
    assert renamed != fp
    os.rename(os.path.join(moved, "zwei.txt"), os.path.join(moved, "0.txt"))   # other order
    assert td.fingerprint(moved, tokenizers[512], "text", 0.05) not in (fp, renamed)
    assert len({renamed, td.fingerprint(moved, tokenizers[600], "text", 0.05),
                td.fingerprint(moved, tokenizers[512], "body", 0.05),
                td.fingerprint(moved, tokenizers[512], "text", 0.1)}) == 4


def test_cache_dir_option_and_default(corpus, tokenizers, tmp_path):
    assert td.cache_dir_for("data/books/") == "data/books.slab_tokens"
    assert td.cache_dir_for("data/c.jsonl") == "data/c.jsonl.slab_tokens"
    assert td.cache_dir_for("data/c.jsonl", str(tmp_path / "tc")) == str(tmp_path / "tc")
    out = td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, cache_dir=str(tmp_path / "tc"),
                           log=lambda m: None)
    assert out["built"] and out["cache"] == str(tmp_path / "tc") and not os.path.exists(corpus + ".slab_tokens")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError) as e:
        td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, cache_dir=str(tmp_path / "a_file" / "tc"),
                         log=lambda m: None)
    assert "a_file/tc" in one_line(e) and "token_cache_dir" in str(e.value)


def test_text_and_folder_corpora_build(tmp_path, docs, tokenizers):
    root = tmp_path / "folder"
    root.mkdir()
    for i, d in enumerate(docs):   # each topic's paragraphs become documents
        (root / f"{i:02d}.txt").write_text(d + "\n")
    out = td.build_or_load(str(root), tokenizers[512], val_fraction=0.1, log=lambda m: None)
    n_docs = len(td.read_documents(str(root)))
    assert out["cache"] == str(root) + ".slab_tokens" and n_docs > len(docs)
    assert out["meta"]["splits"]["train"]["documents"] + out["meta"]["splits"]["val"]["documents"] == n_docs


def test_tokenizer_vocab_mismatch_is_one_line_error(corpus, tokenizers):
    with pytest.raises(ConfigError) as e:
        td.build_or_load(corpus, tokenizers[512], val_fraction=0.2, vocab_size=32000, log=lambda m: None)
    assert "512 pieces" in one_line(e) and "32000" in str(e.value)
    assert not os.path.exists(corpus + ".slab_tokens")


# ------------------------------------------------------------------------------------------ blocks and batches

def test_blocks_pad_the_last_one():
    s = td.TokenStream(np.arange(10, dtype=np.uint16), pad_id=2)
    assert s.n_tokens == 10 and s.num_blocks(4) == 3 and s.num_blocks(5) == 2
    ids, mask = s.block(0, 4)
    assert ids.dtype == mask.dtype == np.int32
    assert ids.tolist() == [0, 1, 2, 3] and mask.tolist() == [1, 1, 1, 1]
    ids, mask = s.block(2, 4)
    assert ids.tolist() == [8, 9, 2, 2] and mask.tolist() == [1, 1, 0, 0]
    with pytest.raises(IndexError):
        s.block(3, 4)


def _block_ids(batches, t):
    """Which blocks a list of batches holds (tokens are arange, so block i starts with i * t)."""
    return [[int(row[0]) // t for row in ids] for ids, _ in batches]


def test_train_batches_shard_shuffle_and_skip():
    t, b = 4, 3
    s = td.TokenStream(np.arange(103, dtype=np.int32))   # 26 blocks, the last one 3 tokens
    assert s.num_batches(t, b, world=2) == 4 and s.num_batches(t, b) == 8
    ranks = [list(s.train_batches(t, b, epoch=0, seed=7, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for batches in ranks:
        for ids, mask in batches:
            assert ids.shape == mask.shape == (b, t) and ids.dtype == np.int32
    blocks = [sum(_block_ids(batches, t), []) for batches in ranks]
    assert not set(blocks[0]) & set(blocks[1]) and len(set(blocks[0] + blocks[1])) == 24
    order = np.random.default_rng([7, 0]).permutation(26)[:24]
    assert blocks[0] == order[0::2].tolist() and blocks[1] == order[1::2].tolist()
    again = list(s.train_batches(t, b, epoch=0, seed=7, rank=0, world=2))
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(again, ranks[0]))
    assert _block_ids(s.train_batches(t, b, epoch=1, seed=7, rank=0, world=2), t) != _block_ids(ranks[0], t)
    assert _block_ids(s.train_batches(t, b, epoch=0, seed=8, rank=0, world=2), t) != _block_ids(ranks[0], t)
    skipped = list(s.train_batches(t, b, epoch=0, seed=7, rank=0, world=2, skip=3))
    assert _block_ids(skipped, t) == _block_ids(ranks[0][3:], t)
    assert list(s.train_batches(t, b, epoch=0, seed=7, rank=0, world=2, skip=9)) == []
    plain = list(s.train_batches(t, b, epoch=5, seed=7, shuffle=False))
    assert _block_ids(plain, t) == [list(range(i, i + 3)) for i in range(0, 24, 3)]
    with pytest.raises(ConfigError):
        s.train_batches(t, b, epoch=0, seed=7, rank=2, world=2)   # checked on the call, not on next()


def test_skip_does_not_read_skipped_batches():
    s = td.TokenStream(np.arange(64, dtype=np.int32))
    reads = []
    rows = s._rows
    s._rows = lambda idx, t: reads.append(list(idx)) or rows(idx, t)
    got = list(s.train_batches(4, 2, epoch=0, seed=0, skip=6))
    assert len(got) == 2 and len(reads) == 2


def test_shuffled_partial_last_block_is_padded_and_masked():
    s = td.TokenStream(np.arange(10, dtype=np.int32), pad_id=0)   # blocks of 4: [0..3] [4..7] [8, 9, pad, pad]
    rows = [(ids[0], mask[0]) for ids, mask in s.train_batches(4, 1, epoch=0, seed=1)]
    assert len(rows) == 3
    last = [(i, m) for i, m in rows if i[0] == 8][0]
    assert last[0].tolist() == [8, 9, 0, 0] and last[1].tolist() == [1, 1, 0, 0]


def test_eval_batches_cover_every_block_once_with_fixed_shape():
    t, b = 4, 3
    s = td.TokenStream(np.arange(1, 43, dtype=np.int32), pad_id=0)   # 11 blocks, the last 2 tokens
    seen = []
    for rank in range(3):
        for ids, mask in s.eval_batches(t, b, rank=rank, world=3):
            assert ids.shape == mask.shape == (b, t)
            real = mask[:, 0] == 1
            assert (ids[~real] == 0).all() and (mask[~real] == 0).all()
            seen += [(int(row[0]) - 1) // t for row in ids[real]]
    assert sorted(seen) == list(range(11))
    assert int(sum(m.sum() for _, m in s.eval_batches(t, b))) == 42
    one = td.TokenStream(np.arange(3, dtype=np.int32))
    assert len(list(one.eval_batches(4, 2, rank=0, world=2))) == 1
    assert list(one.eval_batches(4, 2, rank=1, world=2)) == []


def test_check_seq_length():
    assert td.check_seq_length(2048, 2048) == 2048
    with pytest.raises(ConfigError) as e:
        td.check_seq_length(4096, 2048)
    assert "4096" in one_line(e) and "2048" in str(e.value)
    with pytest.raises(ConfigError) as e:
        td.check_seq_length(1, 2048)
    assert "1" in one_line(e)


# ------------------------------------------------------------------------------------------ scripts

def test_train_tokenizer_cli_trains_on_train_split_and_refuses_overwrite(tmp_path, corpus):
    out = str(tmp_path / "cli.model")
    cmd = [sys.executable, os.path.join(SCRIPTS, "train_tokenizer.py"), "--data", corpus, "--val_fraction", "0.2",
           "--vocab_size", "512", "--output", out]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary == {"output": out, "vocab_size": 512, "documents": 8, "sentences": summary["sentences"]}
    tok = load_tokenizer(out, 512)
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)
    # Deterministic: the function on the same corpus and split writes the same bytes.
    same = str(tmp_path / "same.model")
    train_tokenizer(corpus, 512, same, val_fraction=0.2)
    assert open(same, "rb").read() == open(out, "rb").read()
    before = open(out, "rb").read()
    p = subprocess.run(cmd + ["--vocab_size", "600"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1
    assert "--force" in p.stderr and open(out, "rb").read() == before


def test_train_tokenizer_too_big_vocab_is_one_line(tmp_path, docs):
    with pytest.raises(ConfigError) as e:
        train_tokenizer(docs[:2], 50000, str(tmp_path / "x.model"))
    assert "Vocabulary size too high" in one_line(e) and not os.path.exists(tmp_path / "x.model")


def test_make_text_corpus(tmp_path, capsys):
    out = str(tmp_path / "pydoc.jsonl")
    assert make_text_corpus.main(["--out", out]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == len(topics) and summary["words"] > 10000
    docs = td.read_documents(out)
    assert len(docs) == len(topics) and docs[0] == topics[sorted(topics)[0]]
    titles = [json.loads(line)["title"] for line in open(out, encoding="utf-8")]
    assert titles == sorted(topics)
    assert make_text_corpus.main(["--out", out]) == 0   # same content: left alone
    assert "already up to date" in capsys.readouterr().err
    with open(out, "a") as f:
        f.write("\n")
    assert make_text_corpus.main(["--out", out]) == 2
    assert "--force" in capsys.readouterr().err
    assert make_text_corpus.main(["--out", out, "--force"]) == 0
    assert len(td.read_documents(out)) == len(topics)
