"""train.py / validate.py / run_distribute.sh end to end on real data (scikit-learn's handwritten
digits), as subprocesses: exact resume after SIGKILL, validate reproduces the run's accuracy,
and a 2-worker msrun run on CPU keeps identical replicas."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, kill_when_written, run_two_workers, undecodable_images

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_digits  # noqa: E402

from slab_ms.checkpoint import read_ms_checkpoint, save_ms_checkpoint  # noqa: E402

TINY = ["--model_kwargs", "{embed_dim: 16, depths: [1, 1], num_heads: [1, 2], attn_type: LS, window_size: 8}",
        "--num_samples", "320", "--log_interval", "5"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data") / "digits")
    make_digits.build(out, size=32)
    return out


def train_cmd(data, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs",
            "quickstart_digits.yaml"), "--data_dir", data, "--ckpt_save_dir", out, *TINY, *extra]


def run(cmd, timeout=600):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def counters(ckpt):
    params = read_ms_checkpoint(ckpt)
    return {k: int(v) for k, v in params.items() if k.endswith((".warm", ".iter", ".total_step"))}


def test_resume_after_kill_matches_an_uninterrupted_run(digits, tmp_path):
    args = ["--epoch_size", "3", "--prepbn_steps", "20", "--bn_recalibrate_epochs", "1"]
    full = tmp_path / "full"
    summary = json.loads(run(train_cmd(digits, str(full), *args)).stdout.strip().splitlines()[-1])
    assert summary["steps"] == 30 and summary["epochs"] == 3 and summary["world_size"] == 1
    assert summary["prepbn_lambda"] == 0.0 and 0.0 <= summary["top1"] <= summary["top5"] <= 1.0
    assert (full / "curves.png").stat().st_size > 0 and (full / "train.log").stat().st_size > 0
    kept = sorted(p.name for p in full.glob("*.ckpt"))   # keep_checkpoint_max 2, plus best and final
    assert kept == ["best.ckpt", "final.ckpt", "slab_swin_tiny-0002.ckpt", "slab_swin_tiny-0003.ckpt"], kept
    history = json.loads((full / "history.json").read_text())
    lams = [s["lambda"] for s in history["steps"]]   # 1 -> 0 linearly over the 20 optimizer steps
    assert lams[:20] == pytest.approx([1 - (i + 1) / 20 for i in range(20)]) and set(lams[20:]) == {0.0}

    # The same run, killed (SIGKILL) once epoch 1's checkpoint exists, then resumed.
    cut = tmp_path / "cut"
    kill_when_written(train_cmd(digits, str(cut), *args), cut / "slab_swin_tiny-0001.ckpt", "epoch 1")
    assert not (cut / "summary.json").exists(), "the run finished before it was killed"
    resumed = json.loads(run(train_cmd(digits, str(cut), *args, "--resume", "auto")).stdout.strip().splitlines()[-1])
    assert "resumed from" in (cut / "train.log").read_text()
    assert resumed["steps"] == summary["steps"] and resumed["prepbn_lambda"] == summary["prepbn_lambda"]
    assert counters(cut / "final.ckpt") == counters(full / "final.ckpt")
    # Same data order (seeded per epoch) and restored optimizer state: the weights agree too.
    a, b = read_ms_checkpoint(str(full / "final.ckpt")), read_ms_checkpoint(str(cut / "final.ckpt"))
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a if not k.startswith("meta."))
    assert worst < 1e-4, worst

    # validate.py reproduces the final accuracy from the written checkpoint
    v = run([sys.executable, os.path.join(ROOT, "validate.py"), "--config",
             os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "--data_dir", digits, *TINY[:2],
             "--ckpt_path", str(full / "final.ckpt")])
    got = json.loads(v.stdout.strip().splitlines()[-1])
    assert got["top1"] == pytest.approx(summary["top1"], abs=1e-6) and got["images"] == 364


def test_resume_skips_a_damaged_newest_checkpoint(digits, tmp_path):
    """A truncated newest epoch checkpoint (a disk full, a copy cut short): --resume auto takes
    the newest one that loads and the run completes."""
    out = tmp_path / "damaged"
    args = ["--epoch_size", "3", "--prepbn_fraction", "0.5", "--bn_recalibrate_epochs", "0"]
    run(train_cmd(digits, str(out), *args))
    newest = out / "slab_swin_tiny-0003.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    summary = json.loads(run(train_cmd(digits, str(out), *args, "--resume", "auto")).stdout.strip().splitlines()[-1])
    assert re.search(r"resumed from \S*slab_swin_tiny-0002\.ckpt at epoch 2", (out / "train.log").read_text())
    assert summary["epochs"] == 3 and summary["steps"] == 30


PAPER_RECIPE = {"auto_augment": "randaug-m9-mstd0.5-inc1", "color_jitter": "0.4", "re_prob": "0.25",
                "re_value": "random", "mixup": "0.8", "cutmix": "1.0", "interpolation": "bicubic"}


def _first_batch(digits, mix=False, **overrides):
    """The first training batch of the quickstart config on ``digits`` (32 images, seed 42) as
    numpy ``(images, labels)``, mixed (mixup/cutmix as configured) with ``mix``; ``overrides`` are
    config keys."""
    from slab_ms.engine import data as data_lib
    from slab_ms.engine.config import load_config
    cfg = load_config(os.path.join(ROOT, "configs", "quickstart_digits.yaml"),
                      dict(data_dir=digits, num_samples=32, batch_size=32, num_parallel_workers=1, **overrides))
    # seeded as the trainer seeds them: mindcv's mixup/cutmix and RandAugment draw from numpy's and
    # Python's global generators (one worker: no other thread draws in between)
    before = np.random.get_state(), random.getstate()
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    try:
        x, y = next(iter(data_lib.train_batches(data_lib.train_loader(cfg, mixup=mix))))
    finally:
        np.random.set_state(before[0])
        random.setstate(before[1])
    return x.asnumpy(), y.asnumpy()


def test_paper_recipe_batches_have_mixed_labels_randaugment_and_erasing(digits):
    """The ImageNet configs' data path, each part against the plain transform with the same seed:
    mixup/cutmix make every label ``lam * onehot(y) + (1 - lam) * onehot(flipped y)``, one lam in
    (0, 1) per batch; RandAugment changes most images; random erasing replaces one rectangle of
    2-33% of an image (re_scale) by random values in some images and leaves the other pixels as
    they were. A crop of the whole image (scale and ratio 1) keeps the plain transform fixed."""
    _, labels = _first_batch(digits)
    _, soft = _first_batch(digits, mix=True, **PAPER_RECIPE)
    onehot = np.eye(10, dtype=np.float64)[labels]
    assert soft.shape == (32, 10) and np.allclose(soft.sum(1), 1, atol=1e-6)
    pair = onehot - onehot[::-1]          # mixup and cutmix both mix each image with the flipped batch
    assert (labels != labels[::-1]).sum() >= 16, labels   # most images meet another class
    lam = float(((soft - onehot[::-1]) * pair).sum() / (pair * pair).sum())   # least squares
    assert 0.01 < lam < 0.99, lam   # 0.123 with this seed
    assert np.abs(soft - (lam * onehot + (1 - lam) * onehot[::-1])).max() < 1e-6

    whole = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0]}
    plain, plain_labels = _first_batch(digits, **whole)
    again, _ = _first_batch(digits, **whole)
    np.testing.assert_array_equal(plain, again)   # the reference itself is fixed
    randaug, randaug_labels = _first_batch(digits, auto_augment=PAPER_RECIPE["auto_augment"], **whole)
    np.testing.assert_array_equal(randaug_labels, plain_labels)   # same images, same order
    changed = [not np.array_equal(a, b) for a, b in zip(randaug, plain)]
    assert np.mean(changed) >= 0.5, np.mean(changed)   # 23 of 32 (two ops at probability 0.5 each)
    erased, _ = _first_batch(digits, re_prob=PAPER_RECIPE["re_prob"], re_value="random", **whole)
    areas = []
    for a, b in zip(erased, plain):
        diff = (a != b).any(0)
        if diff.any():
            rows, cols = np.where(diff)
            box = np.zeros_like(diff)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            np.testing.assert_array_equal(diff, box)   # exactly one rectangle, every pixel in it replaced
            areas.append(box.mean())
    assert 2 <= len(areas) <= 16 and all(0.02 <= a <= 0.34 for a in areas), areas   # 5 of 32 at p = 0.25


def test_ema_follows_the_decay_rule_and_validate_scores_the_ema_weights(digits, tmp_path):
    """Training with the paper recipe (EMA decay 0.9) for 3 epochs of one step: the EMA in each
    epoch's checkpoint is ``0.9 * previous EMA + 0.1 * weights`` for every float parameter (counters
    not averaged). ``validate.py --use_ema`` then scores the EMA weights: in a checkpoint whose raw
    classifier always answers the rarest validation class and whose EMA one the commonest, the
    accuracies are those of the EMA classifier."""
    out = tmp_path / "aug"
    recipe = [a for k, v in PAPER_RECIPE.items() for a in ("--" + k, v)]
    recipe += ["--ema", "true", "--ema_decay", "0.9", "--epoch_size", "3", "--num_samples", "32",
               "--keep_checkpoint_max", "3", "--val_while_train", "false", "--bn_recalibrate_epochs", "0",
               "--prepbn_fraction", "1.0"]
    summary = json.loads(run(train_cmd(digits, str(out), *recipe)).stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    ckpts = [read_ms_checkpoint(str(out / f"slab_swin_tiny-{e:04d}.ckpt")) for e in (1, 2, 3)]
    model = {k: v for k, v in ckpts[0].items() if not k.startswith(("ema.", "opt.", "meta.", "scaler."))}
    floats = {k for k, v in model.items() if v.dtype.kind == "f"}
    assert {k[4:] for k in ckpts[0] if k.startswith("ema.")} == floats
    assert "layers.0.blocks.0.norm1.iter" in model and "layers.0.blocks.0.norm1.iter" not in floats
    decay = np.float32(0.9)
    for before, now in zip(ckpts, ckpts[1:]):
        for k in floats:   # float32, as the train step computes it (bit for bit here)
            expected = before["ema." + k] * decay + now[k] * (np.float32(1) - decay)
            np.testing.assert_allclose(now["ema." + k], expected, rtol=1e-6, atol=1e-7, err_msg=k)
    moved = max(np.abs(ckpts[2]["ema." + k] - ckpts[2][k]).max() for k in floats)
    assert moved > 1e-3, moved   # the average really lags the weights

    val = os.path.join(digits, "val")
    counts = {int(c): len(os.listdir(os.path.join(val, c))) for c in os.listdir(val)
              if os.path.isdir(os.path.join(val, c))}
    by_count = sorted(counts, key=lambda c: (counts[c], c))   # rarest first
    assert counts[by_count[0]] != counts[by_count[-1]]
    state = dict(ckpts[2])
    n_out = state["head.bias"].shape[0]
    for prefix, order in (("", by_count), ("ema.", by_count[::-1])):   # raw: rarest first; EMA: commonest
        state[prefix + "head.weight"] = np.zeros_like(state["head.weight"])
        bias = np.zeros(n_out, np.float32)
        bias[order] = np.arange(n_out, 0, -1, dtype=np.float32)   # order[0] highest
        state[prefix + "head.bias"] = bias
    save_ms_checkpoint(state, str(tmp_path / "ema_vs_raw.ckpt"))
    v = run([sys.executable, os.path.join(ROOT, "validate.py"), "--config",
             os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "--data_dir", digits, *TINY[:2],
             "--ckpt_path", str(tmp_path / "ema_vs_raw.ckpt"), "--use_ema", "true"])
    scores = json.loads(v.stdout.strip().splitlines()[-1])
    n = sum(counts.values())
    ema_top1, ema_top5 = counts[by_count[-1]] / n, sum(counts[c] for c in by_count[-5:]) / n
    raw_top1, raw_top5 = counts[by_count[0]] / n, sum(counts[c] for c in by_count[:5]) / n
    assert scores["ema"] is True and scores["images"] == n
    assert (scores["top1"], scores["top5"]) == pytest.approx((ema_top1, ema_top5), abs=1e-6), \
        (scores, (ema_top1, ema_top5), (raw_top1, raw_top5))


def test_two_worker_data_parallel_run(digits, tmp_path):
    out = tmp_path / "dp"
    summary = run_two_workers(os.path.join(ROOT, "configs", "quickstart_digits.yaml"), out, "--data_dir", digits,
                              *TINY, "--epoch_size", "2", "--prepbn_fraction", "0.5")   # identical replicas
    assert summary["world_size"] == 2 and summary["global_batch"] == 64
    assert summary["steps"] == 20   # num_samples is per shard (mindcv): 320 / 32 = 10 steps per epoch
    losses = [s["loss"] for s in json.loads((out / "history.json").read_text())["steps"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def _linked_copy(digits, root, empty=None):
    """A copy of the digits tree as symlinks, with class folder ``empty`` (e.g. "train/3") left empty."""
    for split in ("train", "val"):
        for c in sorted(os.listdir(os.path.join(digits, split))):
            if not os.path.isdir(os.path.join(digits, split, c)):   # e.g. the content-check cache file
                continue
            (root / split / c).mkdir(parents=True)
            if f"{split}/{c}" != empty:
                for f in os.listdir(os.path.join(digits, split, c)):
                    os.symlink(os.path.join(digits, split, c, f), root / split / c / f)
    return root


def test_unreadable_images_are_replaced_counted_and_limited(digits, tmp_path):
    """Training images that are empty, random bytes or a truncated PNG (caught by the start-up
    content check), and a JPEG and a PNG that pass that check but fail to decode (caught by the
    decoder): the run completes with them replaced in the pipeline, counted and named, and
    validate.py counts a bad validation image too. Over max_bad_images the run refuses, at
    start-up or when the decoder finds one too many."""
    data = _linked_copy(digits, tmp_path / "bad_images")
    folder = data / "train" / "5"
    good = folder / sorted(os.listdir(folder))[-1]
    (folder / "0000_empty.png").write_bytes(b"")
    (folder / "0001_random.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    png = good.read_bytes()
    (folder / "0002_truncated.png").write_bytes(png[: len(png) // 2])
    jpeg, garbled = undecodable_images(str(good))
    (folder / "0003_huffman.jpg").write_bytes(jpeg)
    (folder / "0004_idat.png").write_bytes(garbled)
    (data / "val" / "2" / "0000_huffman.jpg").write_bytes(jpeg)
    out = tmp_path / "run"
    run(train_cmd(str(data), str(out), "--num_samples", "none", "--epoch_size", "1", "--prepbn_fraction", "0.5",
                  "--bn_recalibrate_epochs", "0", "--max_bad_images", "5"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_images"] == {"train": 5, "val": 1}
    log = (out / "train.log").read_text()
    assert "3 unusable image files found in train/, 3 so far" in log   # the content check, at start-up
    named = re.findall(r"unusable image files found in \w+/, \d so far .*", log)
    for name in ("0003_huffman.jpg", "0004_idat.png", "val/2/0000_huffman.jpg"):
        assert any(name in line for line in named), log[-3000:]

    v = subprocess.run([sys.executable, os.path.join(ROOT, "validate.py"), "--config",
                        os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "--data_dir", str(data), *TINY[:2],
                        "--ckpt_path", str(out / "final.ckpt")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert v.returncode == 0, v.stderr[-2000:]
    got = json.loads(v.stdout.strip().splitlines()[-1])
    assert got["bad_images"] == 1 and got["images"] == 364 and "0000_huffman.jpg skipped" in v.stderr

    for limit, message in (("2", "has 3 unreadable image files, more than max_bad_images=2"),
                           ("3", "image files in train/ cannot be read or decoded, more than max_bad_images=3")):
        p = subprocess.run(train_cmd(str(data), str(tmp_path / f"refused{limit}"), "--num_samples", "none",
                                     "--max_bad_images", limit), cwd=ROOT, capture_output=True, text=True, timeout=300)
        last = p.stderr.strip().splitlines()[-1]
        # (MindSpore logs each replaced sample as a WARNING with the decoder's exception; the error is one line)
        assert p.returncode != 0 and last.startswith("error: ") and message in last, p.stderr[-2000:]


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    """Epoch 1 trains normally; from epoch 2 the learning rate is 1e30 (multi-step decay with
    rate 1e30 at milestone 1), the weights overflow and the loss becomes NaN or inf."""
    out = tmp_path / "nan"
    p = subprocess.run(train_cmd(digits, str(out), "--epoch_size", "3", "--warmup_epochs", "0", "--lr", "1e-3",
                                 "--scheduler", "multi_step_decay", "--multi_step_decay_milestones", "[1]",
                                 "--decay_rate", "1e30", "--prepbn_fraction", "0.3", "--bn_recalibrate_epochs", "0"),
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert re.search(r"loss became (nan|inf) at epoch 2", last) and "last good checkpoint" in last, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    kept = sorted(f.name for f in out.glob("*.ckpt"))
    assert "slab_swin_tiny-0001.ckpt" in kept and not {"slab_swin_tiny-0002.ckpt", "final.ckpt"} & set(kept), kept
    params = read_ms_checkpoint(str(out / "slab_swin_tiny-0001.ckpt"))
    assert all(np.isfinite(v).all() for v in params.values() if v.dtype.kind == "f")


def _worker_pid(out_dir, rank):
    """The pid of msrun's worker ``rank`` training into ``out_dir`` (from /proc), or None."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if (str(out_dir).encode() in cmd and b"MS_ROLE=MS_WORKER" in env
                and f"MS_NODE_ID={rank}".encode() in env):
            return int(pid)
    return None


def test_a_dead_worker_ends_the_data_parallel_run_with_an_error(digits, tmp_path):
    """SIGKILL one of two workers mid-run: the launcher exits non-zero within a bounded time
    (msrun kills the other worker), never hangs in a collective."""
    out = tmp_path / "dead"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    err_file = open(tmp_path / "stderr.txt", "w+")   # files, not pipes: msrun writes a lot and must never block
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "run_distribute.sh"),
                             os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "2", "--data_dir", digits,
                             "--ckpt_save_dir", str(out), *TINY, "--epoch_size", "200", "--prepbn_fraction", "0.5"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err_file, text=True, env=env,
                            start_new_session=True)
    try:
        log = out / "logs" / "worker_1.log"
        deadline = time.time() + 600
        while time.time() < deadline and not (log.exists() and "step 10/" in log.read_text()):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            time.sleep(1)
        pid = _worker_pid(out, 1)
        assert pid is not None, "worker 1 not found"
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        proc.wait(timeout=300)
        elapsed = time.time() - killed
    finally:
        if proc.poll() is None:   # a hang: clean up before failing
            os.killpg(proc.pid, signal.SIGKILL)
        err_file.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode != 0 and "distributed training failed" in err, err[-2000:]
    assert elapsed < 180, f"the launcher took {elapsed:.0f} s to exit after a worker died"
    assert _worker_pid(out, 0) is None   # the surviving worker is gone too


def test_bad_inputs_fail_with_one_line(digits, tmp_path):
    base = [sys.executable, os.path.join(ROOT, "train.py"), "--config",
            os.path.join(ROOT, "configs", "quickstart_digits.yaml"), "--ckpt_save_dir", str(tmp_path / "o")]
    empty_class = str(_linked_copy(digits, tmp_path / "empty_class", empty="train/3"))
    cases = [(["--data_dir", str(tmp_path / "nowhere")], "data directory .* not found"),
             (["--data_dir", digits, "--num_classes", "7"], "num_classes is 7 but .* has 10 class folders"),
             (["--data_dir", digits, "--lrr", "0.1"], "unknown config key 'lrr'.*did you mean 'lr'"),
             (["--data_dir", digits, *TINY, "--prepbn_steps", "100000"], "ends after the run"),
             (["--data_dir", empty_class], "class folder .*/train/3 holds no images")]
    for extra, pattern in cases:
        p = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode != 0
        last = p.stderr.strip().splitlines()[-1]
        assert re.search(pattern, last) and "Traceback" not in p.stderr, p.stderr[-2000:]
