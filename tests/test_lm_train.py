"""train.py / validate.py / generate.py / run_distribute.sh for a PRepBN LLaMA on real text (the
pydoc topics that ship with Python), as subprocesses: the loss falls, lambda and the 16-forward
counters follow upstream's gating with gradient accumulation, a SIGKILLed run resumes to the same
step, counters and weights, the fold keeps the perplexity, 2 msrun workers keep identical replicas,
and bad inputs fail in one line."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from slab_ms.checkpoint import read_ms_checkpoint
from slab_ms.lm.tokenizer_training import train_tokenizer

from conftest import ROOT, kill_when_written, load_script, run_two_workers

make_text_corpus = load_script("make_text_corpus")

CONFIG = os.path.join(ROOT, "configs", "quickstart_lm.yaml")
SMALL = ["--model_kwargs", "{vocab_size: 512, hidden_size: 64, intermediate_size: 172, num_hidden_layers: 2, "
         "num_attention_heads: 4}", "--seq_length", "128", "--batch_size", "16", "--log_interval", "4"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The real-text corpus and a 512-piece tokenizer trained on its training split."""
    root = tmp_path_factory.mktemp("text")
    data = str(root / "pydoc.jsonl")
    make_text_corpus.write(data)
    tok = str(root / "tok.model")
    train_tokenizer(data, 512, tok, val_fraction=0.15)   # the split of configs/quickstart_lm.yaml
    return data, tok


def train_cmd(corpus, out, *extra):
    data, tok = corpus
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, "--data_dir", data,
            "--tokenizer", tok, "--ckpt_save_dir", str(out), *SMALL, *extra]


def run(cmd, timeout=600, code=0):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == code, f"{' '.join(cmd)} exit {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def last_json(p):
    return json.loads(p.stdout.strip().splitlines()[-1])


def counters(ckpt):
    params = read_ms_checkpoint(str(ckpt))
    return {k: int(v) for k, v in params.items() if k.endswith((".num_step", ".warm", ".iter", ".total_step"))}


def upstream_gating(total_step, warm, forwards):
    """Upstream's LinearNorm (the PyTorch reference) run ``forwards`` training forwards from the
    counters the trainer sets: its counters after each forward, and the lambda its next forward uses."""
    import torch
    from slab_ms.convert.torch_ref.llama import LinearNorm
    norm = LinearNorm(8, warm=warm, step=total_step).train()
    x = torch.randn(2, 3, 8)
    states = []
    for _ in range(forwards):
        norm(x)
        w, it, tot = int(norm.warm), int(norm.iter), int(norm.total_step)
        states.append({"num_step": int(norm.num_step), "warm": w, "iter": it, "total_step": tot,
                       "lambda": 1.0 if w > 0 else float(np.float32(it) / np.float32(tot))})
    return states


def test_lm_run_resume_fold_and_generate(corpus, tmp_path):
    # 96 forwards; the plan becomes counters warm 1, total_step 3 (16-forward periods): pure BN
    # from step 25 on, so the network has half the run to learn without RMSNorm
    k, steps, warm = 2, 24, 8
    args = ["--gradient_accumulation_steps", str(k), "--max_steps", "48", "--prepbn_steps", str(steps),
            "--prepbn_warm", str(warm), "--ckpt_save_steps", "10", "--bn_recalibrate_epochs", "1",
            "--bn_recalibrate_batches", "4", "--warmup_steps", "4", "--lr", "0.01"]
    full = tmp_path / "full"
    summary = last_json(run(train_cmd(corpus, full, *args)))
    assert summary["task"] == "language" and summary["steps"] == 48 and summary["world_size"] == 1
    assert summary["prepbn_lambda"] == 0.0 and summary["bn_recalibrated_batches"] == 4
    assert summary["tokens_per_step"] == 16 * 128 * k and summary["train_tokens"] > 50000
    history = json.loads((full / "history.json").read_text())
    losses = [s["loss"] for s in history["steps"]]
    assert len(losses) == 48 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses   # it learns
    assert summary["val_ppl"] < 400   # below a uniform guess over the 512-piece vocabulary

    # lambda after every optimizer step and the final counters: exactly upstream's 16-forward gating
    from slab_ms.models.llama import LlamaPRepBN
    assert LlamaPRepBN.counters_for(steps * k, warm * k) == (3, 1)
    expected = upstream_gating(3, 1, 48 * k)
    assert [s["lambda"] for s in history["steps"]] == pytest.approx([e["lambda"] for e in expected[k - 1::k]])
    assert history["steps"][0]["lambda"] == 1.0 and history["steps"][-1]["lambda"] == 0.0
    got = counters(full / "final.ckpt")
    assert len(got) == 4 * 5   # 2 layers x 2 norms + the final norm
    for name, value in got.items():
        assert value == expected[-1][name.rsplit(".", 1)[1]], name
    kept = sorted(p.name for p in full.glob("*.ckpt"))   # numbered by optimizer step; keep_checkpoint_max 2
    assert "final.ckpt" in kept and "best.ckpt" in kept and "slab_llama_tiny-0048.ckpt" in kept, kept
    assert (full / "final.config.json").is_file() and (full / "curves.png").stat().st_size > 0

    # SIGKILL once the step-30 checkpoint (inside epoch 2) exists, then --resume auto
    cut = tmp_path / "cut"
    kill_when_written(train_cmd(corpus, cut, *args), cut / "slab_llama_tiny-0030.ckpt", "step 30")
    assert not (cut / "summary.json").exists(), "the run finished before it was killed"
    resumed = last_json(run(train_cmd(corpus, cut, *args, "--resume", "auto")))
    assert re.search(r"resumed from \S*slab_llama_tiny-00[34]0\.ckpt at step [34]0", (cut / "train.log").read_text())
    assert resumed["steps"] == 48 and counters(cut / "final.ckpt") == got
    a, b = read_ms_checkpoint(str(full / "final.ckpt")), read_ms_checkpoint(str(cut / "final.ckpt"))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[key].astype(np.float64) - b[key]).max()) for key in a if not key.startswith("meta."))
    assert worst < 1e-5, worst
    assert resumed["val_ppl"] == pytest.approx(summary["val_ppl"], rel=1e-5)

    # validate.py reproduces the run's perplexity; the folded model gives the same perplexity
    data, tok = corpus
    val = [sys.executable, os.path.join(ROOT, "validate.py"), "--config", CONFIG, "--data_dir", data, "--tokenizer",
           tok, *SMALL[:6], "--ckpt_path", str(full / "final.ckpt")]
    plain, fused = last_json(run(val)), last_json(run(val + ["--reparam"]))
    assert plain["perplexity"] == pytest.approx(summary["val_ppl"], rel=1e-5)
    assert fused["reparam"] and fused["folded"] == "all" and fused["tokens"] == plain["tokens"]
    assert fused["perplexity"] == pytest.approx(plain["perplexity"], rel=1e-4)
    # best.ckpt is the best model the run made: validate.py on it gives best_val_ppl, no worse than final
    best = last_json(run(val[:-1] + [str(full / "best.ckpt")]))
    assert best["perplexity"] == pytest.approx(summary["best_val_ppl"], rel=1e-5)
    assert best["perplexity"] <= plain["perplexity"] * (1 + 1e-6)

    # generate.py samples from the training checkpoint (its .config.json rebuilds the model)
    g = last_json(run([sys.executable, os.path.join(ROOT, "generate.py"), "--ckpt", str(full / "final.ckpt"),
                       "--tokenizer", tok, "--prompt", "The for statement", "--max_new_tokens", "8", "--reparam"]))
    assert g["new_tokens"] == 8 and isinstance(g["texts"][0], str)


def test_two_worker_lm_run_keeps_identical_replicas(corpus, tmp_path):
    out = tmp_path / "dp"
    data, tok = corpus
    summary = run_two_workers(CONFIG, out, "--data_dir", data, "--tokenizer", tok, *SMALL, "--max_steps", "12",
                              "--warmup_steps", "2", "--prepbn_fraction", "1.0", "--bn_recalibrate_batches", "2")
    assert summary["world_size"] == 2 and summary["steps"] == 12 and summary["global_batch"] == 32


def test_schedule_translation_follows_the_16_forward_gating():
    """Planned optimizer steps -> LLaMA counters, for several accumulations: lambda is 1 at the
    first forward, 0 by the end of the planned steps, and the run is refused when rounding to
    16-forward periods would end the schedule after the run."""
    from slab_ms.engine.config import load_config
    from slab_ms.engine.schedule import plan_schedule
    from slab_ms.errors import ConfigError
    from slab_ms.models.llama import LlamaPRepBN
    from slab_ms.models.registry import create_model
    net = create_model("slab_llama_mini")
    for k, steps, warm in ((1, 64, 32), (2, 40, 8), (16, 3, 2), (3, 11, 0), (1, 17, 1)):
        total, w = LlamaPRepBN.counters_for(steps * k, warm * k)
        assert (total, w) == (-(-steps * k // 16), -(-warm * k // 16))
        finish = LlamaPRepBN.forwards_to_finish(total, w)
        states = upstream_gating(total, w, (steps + warm) * k + 16)
        lams = [1.0] + [s["lambda"] for s in states]   # the lambda of forward f is lams[f]
        assert lams[finish] == 0.0 and lams[finish - 1] > 0.0
        assert all(a >= b for a, b in zip(lams, lams[1:]))
        assert lams[16 * w] == 1.0 and lams[16 * w + 1] < 1.0   # RMSNorm alone for 16 * warm forwards
        assert finish <= (steps + warm) * k + 15   # rounding to whole periods moves the end by < 16 forwards
        cfg = load_config(CONFIG, {"prepbn_steps": steps, "prepbn_warm": warm, "gradient_accumulation_steps": k})
        run_steps = max(steps + warm, -(-finish // k))   # the shortest run that finishes the schedule
        assert plan_schedule(cfg, net, run_steps) == (steps, warm)
        if finish > (steps + warm) * k:
            with pytest.raises(ConfigError, match="reach lambda 0 at training forward"):
                plan_schedule(cfg, net, steps + warm)


def test_bad_text_inputs_fail_with_one_line(corpus, tmp_path):
    data, tok = corpus
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    cases = [
        (["--data_dir", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        (["--data_dir", str(empty)], "empty"),
        (["--model_kwargs", "{vocab_size: 1000}"], "512 pieces but the model's vocabulary is 1000"),
        (["--seq_length", "4096"], "4096"),
        (["--tokenizer", ""], "needs tokenizer"),
        (["--dataset", "imagenet"], "does not fit"),
        (["--max_steps", "2", "--warmup_steps", "0", "--prepbn_steps", "40"], "ends after the run"),
        (["--max_steps", "2"], "warm-up (20 optimizer steps) is longer than the run"),
    ]
    for extra, needle in cases:
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", CONFIG, "--data_dir", data, "--tokenizer",
               tok, "--ckpt_save_dir", str(tmp_path / "out"), *SMALL, *extra]
        p = run(cmd, code=2)
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], (extra, p.stderr[-2000:])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_lm_sink_mode_gives_the_per_step_numbers(corpus, tmp_path, accumulation):
    """The language model goes through the same sunk loop as the vision runs: per-step losses
    within 1e-6 and weights within 1e-6 of the per-step loop, with the LLaMA PRepBN's 16-forward
    counters moved in the graph; a checkpoint step ends a sink."""
    from slab_ms.engine.config import load_config, parse_overrides
    from slab_ms.engine.lm_trainer import LMRun
    data, tok = corpus
    runs, sizes = [], []
    for sink in (False, True):
        over = parse_overrides(SMALL + ["--data_dir", data, "--tokenizer", tok, "--ckpt_save_dir",
                                        str(tmp_path / str(sink)), "--max_steps", "6", "--ckpt_save_steps", "3",
                                        "--prepbn_fraction", "0.5", "--val_while_train", "false", "--warmup_steps", "2",
                                        "--gradient_accumulation_steps", str(accumulation),
                                        "--dataset_sink_mode", str(sink).lower(), "--sink_size", "4"])
        run = LMRun(load_config(CONFIG, over))
        run.start()
        if sink:
            original = run.sink_loop.run

            def recording(batches, steps, original=original):
                sizes.append(steps)
                return original(batches, steps)
            run.sink_loop.run = recording
        run.train_epoch(0)
        runs.append(run)
    loop, sunk = runs
    assert sizes == [3, 3]   # sink_size 4, cut at the checkpoint of step 3
    assert (tmp_path / "True" / "slab_llama_tiny-0003.ckpt").exists()
    a, b = ([s["loss"] for s in r.history["steps"]] for r in runs)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=0)
    for (name, p), (_, q) in zip(loop.net.parameters_and_names(), sunk.net.parameters_and_names()):
        x, y = p.asnumpy().astype(np.float64), q.asnumpy().astype(np.float64)
        assert np.abs(x - y).max() <= 1e-6 * max(1.0, np.abs(x).max()), name
