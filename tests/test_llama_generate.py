"""Generation with the converted upstream mini: greedy ids equal upstream's with and without the KV
cache, fused and unfused; decoding compiles two graphs; padded batches equal single prompts;
sampling is seeded; eos stops a row; generate.py runs with a SentencePiece tokenizer."""
import json
import os

import numpy as np
import pytest

import slab_ms
from slab_ms.cli.convert import main as convert_main
from slab_ms.cli.generate import main as generate_main
from slab_ms.convert.hf import load_llama
from slab_ms.errors import ConfigError
from slab_ms.lm.generation import GenerationStats, generate, generate_text, kv_runner, warp_logits
from slab_ms.lm.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def golden(reference_dir):
    return np.load(os.path.join(reference_dir, "llama", "mini_golden.npz"))


@pytest.fixture(scope="module")
def mini_ckpt(reference_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "mini.ckpt"
    assert convert_main(["--from", "torch", "--input", os.path.join(reference_dir, "llama", "mini"),
                         "--output", str(path)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A 256-piece SentencePiece model (the mini's vocabulary) trained on Python's own help texts."""
    import sentencepiece as spm
    from pydoc_data.topics import topics
    lines = [line for text in topics.values() for line in text.splitlines() if line.strip()]
    prefix = str(tmp_path_factory.mktemp("tok") / "tok")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=256,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   character_coverage=1.0, minloglevel=2, num_threads=1)
    return prefix + ".model"


def test_greedy_generation_matches_upstream_with_and_without_cache_fused_and_not(mini_ckpt, golden):
    prompt = golden["prompt_ids"]
    net = load_llama(mini_ckpt)
    stats = GenerationStats()
    ids = generate(net, prompt, max_new_tokens=16, eos_token_id=None, stats=stats)
    np.testing.assert_array_equal(ids, golden["greedy_ids_cache"])
    runner = kv_runner(net, 1, 32)
    assert len(runner.compile_cache) == 2          # one prefill graph and one one-token graph for 16 tokens
    assert len(stats.step_s) == 15 and stats.decode_tokens_per_s > 0
    np.testing.assert_array_equal(generate(net, prompt, max_new_tokens=16, eos_token_id=None, use_cache=False),
                                  golden["greedy_ids_nocache"])
    slab_ms.reparameterize(net)
    np.testing.assert_array_equal(generate(net, prompt, max_new_tokens=16, eos_token_id=None),
                                  golden["greedy_ids_cache_merged"])
    np.testing.assert_array_equal(generate(net, prompt, max_new_tokens=16, eos_token_id=None, use_cache=False),
                                  golden["greedy_ids_nocache_merged"])


def test_padded_batch_equals_single_prompts_and_sampling_is_seeded(mini_ckpt, golden):
    net = load_llama(mini_ckpt)
    prompts = [golden["prompt_ids"][0].tolist(), [1, 5, 6], [1, 77, 88, 99, 100, 101, 102]]
    batch = generate(net, prompts, max_new_tokens=6, eos_token_id=None)
    assert batch.shape == (3, 7 + 6)
    np.testing.assert_array_equal(batch, generate(net, prompts, max_new_tokens=6, eos_token_id=None, use_cache=False))
    for row, p in zip(batch, prompts):
        np.testing.assert_array_equal(row[7 - len(p):], generate(net, [p], max_new_tokens=6, eos_token_id=None)[0])

    sample = dict(max_new_tokens=6, do_sample=True, temperature=0.8, top_k=20, top_p=0.9, eos_token_id=None)
    a = generate(net, prompts, seed=3, **sample)
    np.testing.assert_array_equal(a, generate(net, prompts, seed=3, **sample))
    np.testing.assert_array_equal(a, generate(net, prompts, seed=3, use_cache=False, **sample))
    assert not np.array_equal(a, generate(net, prompts, seed=4, **sample))
    greedy_k1 = generate(net, prompts, max_new_tokens=6, eos_token_id=None, do_sample=True, top_k=1, seed=0)
    np.testing.assert_array_equal(greedy_k1, batch)

    # eos: a row stops (then pads) when it emits eos; generation ends once every row has
    generated = batch[0, 7:].tolist()
    eos = generated[2]
    stop = generated.index(eos) + 1
    stopped = generate(net, prompts[:1], max_new_tokens=6, eos_token_id=eos)
    np.testing.assert_array_equal(stopped[0], batch[0, 2:7 + stop])
    both = generate(net, prompts[:2], max_new_tokens=6, eos_token_id=eos)
    np.testing.assert_array_equal(both[0, :5 + stop], stopped[0])
    assert (both[0, 5 + stop:] == 0).all()          # pad_token_id after eos


def test_logit_warpers_follow_hf():
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], np.float32)
    assert np.isinf(warp_logits(logits, top_k=2)).sum() == 2
    probs = np.exp(logits) / np.exp(logits).sum()
    kept = np.isfinite(warp_logits(logits, top_p=0.7))[0]
    assert kept.tolist() == [False, True, True, False] and probs[0, [1, 2]].sum() >= 0.7
    assert np.isfinite(warp_logits(logits, top_p=0.01)).sum() == 1          # at least one token kept
    np.testing.assert_allclose(warp_logits(logits, temperature=0.5), logits * 2)


def test_tokenizer_and_generate_cli(mini_ckpt, tokenizer_file, golden, tmp_path, capsys):
    tok = load_tokenizer(tokenizer_file, 256)
    ids = tok.encode("The return statement")
    assert ids[0] == 1 and tok.decode(ids + [2, 77]) == "The return statement"
    with pytest.raises(ConfigError, match="has 256 pieces but the model's vocabulary is 32000"):
        load_tokenizer(tokenizer_file, 32000)
    with pytest.raises(ConfigError, match="no such file"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(ConfigError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")

    net = load_llama(mini_ckpt)
    texts, out = generate_text(net, tok, ["def f(x):", "The"], max_new_tokens=3, eos_token_id=None)
    assert len(texts) == 2 and out.shape[1] == len(tok.encode("def f(x):")) + 3

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The return statement\nclass A:\n")
    capsys.readouterr()
    rc = generate_main(["--ckpt", mini_ckpt, "--tokenizer", tokenizer_file, "--prompts", str(prompts),
                        "--prompt", "import os", "--max_new_tokens", "4", "--reparam", "--do_sample", "--seed", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    result = json.loads(out[-1])
    assert len(result["ids"]) == 3 and len(result["texts"]) == 3 and result["reparam"]
    assert "tokens/s" in out[-2]
    rc = generate_main(["--ckpt", mini_ckpt, "--prompt-ids", "1,190,166,138,34", "--max_new_tokens", "16",
                        "--no-cache"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and result["ids"] == golden["greedy_ids_nocache"].tolist() and not result["use_cache"]

    for argv, expected in (([], "text prompts need --tokenizer"),
                           (["--tokenizer", str(tmp_path / "missing.model")], "no such file")):
        rc = generate_main(["--ckpt", mini_ckpt, "--prompt", "hi", *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and expected in err[0]
