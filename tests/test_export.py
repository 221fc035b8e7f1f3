"""export.py and infer.py: MindIR (dynamic batch) and ONNX reproduce the MindSpore model; infer.py
preprocesses exactly as validate.py and names the runtime it used."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms

import slab_ms
from slab_ms.checkpoint import save_ms_checkpoint
from slab_ms.engine import data as data_lib

from conftest import ROOT, SMALL_VARIANTS, SWIN_MINI, randomize_ms, rel_err, tiny_digits_model, undecodable_images


def export(*args):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mini_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("mini")
    net = randomize_ms(slab_ms.create_model("slab_swin_tiny", **SWIN_MINI), seed=7, bias_scale=0.2)
    path = str(d / "mini.ckpt")
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, path)
    return path


def _reference(ckpt, x):
    net = slab_ms.create_model("slab_swin_tiny", **SWIN_MINI)
    slab_ms.load_checkpoint(net, ckpt)
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


@pytest.mark.parametrize("reparam", [False, True])
def test_mindir_dynamic_batch_reproduces_the_model(mini_ckpt, tmp_path, reparam):
    out = str(tmp_path / "m.mindir")
    sets = [f"--set={k}={v!r}".replace(" ", "") for k, v in SWIN_MINI.items()]
    meta = export("--model", "slab_swin_tiny", "--ckpt_path", mini_ckpt, "--format", "MINDIR", "--output", out,
                  "--dynamic-batch", *sets, *(["--reparam"] if reparam else []))
    assert meta["input_shape"][0] is None and meta["reparameterized"] == reparam
    if reparam:
        assert meta["norms_left"] == []
    graph = ms.nn.GraphCell(ms.load(out))
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    expected = _reference(mini_ckpt, x)
    for b in (1, 3):   # one file, two batch sizes
        got = graph(ms.Tensor(x[:b])).asnumpy()
        assert rel_err(got, expected[:b]) < 1e-5, rel_err(got, expected[:b])


@pytest.mark.parametrize("name", ["deit_tiny_prepbn", "slab_deit_tiny", "pvt_tiny_prepbn", "slab_pvt_tiny",
                                  "slab_cswin_tiny"])
def test_every_family_exports_fused_with_a_dynamic_batch(name, tmp_path):
    """DeiT (class token, softmax and SLA), PVT (spatial reduction, SLA) and CSwin (stripes)."""
    kw = dict(SMALL_VARIANTS[name], num_classes=10)
    net = randomize_ms(slab_ms.create_model(name, **kw), seed=5, bias_scale=0.2)
    ckpt, out = str(tmp_path / "m.ckpt"), str(tmp_path / "m.mindir")
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, ckpt)
    sets = [f"--set={k}={v!r}".replace(" ", "") for k, v in kw.items()]
    meta = export("--model", name, "--ckpt_path", ckpt, "--output", out, "--dynamic-batch", "--reparam", *sets)
    assert meta["norms_left"] == [] and meta["input_shape"][0] is None
    net.set_train(False)
    x = np.random.default_rng(2).standard_normal((3, 3, 224, 224)).astype(np.float32)
    expected = net(ms.Tensor(x)).asnumpy()
    graph = ms.nn.GraphCell(ms.load(out))
    for b in (1, 3):
        got = graph(ms.Tensor(x[:b])).asnumpy()
        assert rel_err(got, expected[:b]) < 1e-5, (b, rel_err(got, expected[:b]))


def test_onnx_runs_under_onnxruntime(mini_ckpt, tmp_path):
    import onnxruntime as ort   # a test dependency (requirements-test.txt)
    out = str(tmp_path / "m.onnx")
    sets = [f"--set={k}={v!r}".replace(" ", "") for k, v in SWIN_MINI.items()]
    export("--model", "slab_swin_tiny", "--ckpt_path", mini_ckpt, "--format", "ONNX", "--output", out,
           "--batch", "2", "--reparam", *sets)
    sess = ort.InferenceSession(out)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert rel_err(got, _reference(mini_ckpt, x)) < 1e-5


def test_export_refuses_bad_requests(mini_ckpt, tmp_path):
    base = [sys.executable, os.path.join(ROOT, "export.py"), "--model", "slab_swin_tiny", "--ckpt_path", mini_ckpt]
    # a bad flag exits 2, a checkpoint that does not fit 1 (as train.py and validate.py)
    cases = [(["--format", "ONNX", "--dynamic-batch", "--output", str(tmp_path / "a.onnx")], "no dynamic shapes", 2),
             (["--output", str(tmp_path / "a.onnx")], "must end with .mindir", 2),
             (["--output", str(tmp_path / "a.mindir"), "--batch", "0"], "--batch must be >= 1", 2),
             (["--output", str(tmp_path / "a.mindir")], "does not fit", 1),   # full-size model, mini checkpoint
             (["--model", "nope", "--output", str(tmp_path / "b.mindir")], "unknown model", 2)]
    for extra, pattern, code in cases:
        p = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == code and len(lines) == 1 and pattern in lines[0], (extra, p.returncode, p.stderr[-1500:])
        assert not any(f.suffix in (".mindir", ".onnx") for f in tmp_path.iterdir())


def infer(*args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(p, *needles):
    """The run failed with exactly one stderr line, ``error: ...``, holding every needle (a file name)."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr[-1500:])
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """The tiny digits model exported (fused, dynamic batch) for GraphCell: ``(digits, net, ckpt, model_file,
    config, cfg)``."""
    tmp = tmp_path_factory.mktemp("tiny")
    digits, config, cfg, net, ckpt = tiny_digits_model(tmp)
    model_file = str(tmp / "tiny.mindir")
    export("--config", config, "--ckpt_path", ckpt, "--reparam", "--dynamic-batch", "--output", model_file)
    return digits, net, ckpt, model_file, config, cfg


def test_infer_matches_the_validation_pipeline(tiny_export, tmp_path):
    digits, net, ckpt, model_file, config, cfg = tiny_export
    logits = []   # validate.py's path: eval_loader over val/, in file order
    for x, _ in data_lib.eval_loader(cfg).create_tuple_iterator(num_epochs=1):
        logits.append(net(x).asnumpy().astype(np.float64))
    logits = np.concatenate(logits)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = str(tmp_path / "predictions.json")
    p = infer("--model_file", model_file, "--images", os.path.join(digits, "val"), "--output", out)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("runtime: mindspore nn.GraphCell (cpu); ") or \
        p.stdout.startswith("runtime: mindspore_lite")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["images"] == 364 and result["bad_images"] == 0 and len(set(np.round(result["top1_prob"], 4))) > 10
    assert result["top1"] == [str(i) for i in probs.argmax(1)]   # class names from the data's folders
    np.testing.assert_allclose(result["top1_prob"], probs.max(1), atol=1e-5)
    # per-file predictions: every file by name, its top 5 in order, also in --output
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(digits, "val")) for f in fs)
    assert [r["image"] for r in result["predictions"]] == files
    for r, pr in zip(result["predictions"], probs):
        assert [lab for lab, _ in r["top"]] == [str(j) for j in np.argsort(-pr)[:5]]
        np.testing.assert_allclose([q for _, q in r["top"]], np.sort(pr)[::-1][:5], atol=1e-5)
    with open(out) as f:
        assert json.load(f) == result
    sec = result["seconds"]
    assert 0 < sec["first_result"] <= sec["last_result"]
    assert 0 < sec["runtime_first_batch"] < sec["runtime"] < sec["last_result"]   # 23 batches in the GraphCell


@pytest.mark.parametrize("prep", [
    {"image_resize": 32, "crop_pct": 0.875, "interpolation": "bilinear", "mean": [123.7, 116.3, 103.5],
     "std": [58.4, 57.1, 57.4]},
    {"image_resize": 24, "crop_pct": 1.0, "interpolation": "bicubic", "mean": [127.5] * 3, "std": [127.5] * 3}])
def test_batched_preprocessing_gives_each_images_own_pixels(prep, tmp_path):
    """infer.py's Preprocess (decode per file, then Resize/CenterCrop/Normalize once per group of same-size
    images, HWC2CHW as a transpose) gives every image exactly what validate.py's per-image transform
    gives it, in order, whatever the mix of sizes, modes and formats in the batch."""
    from PIL import Image
    from mindspore.dataset.transforms import Compose
    from slab_ms.deploy import decode_batch, make_pipeline
    from slab_ms.engine.config import load_config
    cfg = load_config(None, {k: (json.dumps(v) if isinstance(v, list) else str(v)) for k, v in prep.items()})
    per_image = Compose(data_lib.eval_transforms(cfg))
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w, mode, ext) in enumerate([(40, 37, "RGB", "png"), (32, 32, "L", "png"), (40, 37, "RGB", "jpg"),
                                           (20, 50, "RGBA", "png"), (32, 32, "RGB", "png"), (40, 37, "P", "png"),
                                           (32, 32, "RGB", "jpg")]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        paths.append(str(tmp_path / f"{i}.{ext}"))
        img.save(paths[-1])
    pipeline = make_pipeline(prep)
    batch, kept, bad = decode_batch(paths, pipeline)
    want = np.stack([per_image(np.fromfile(p, np.uint8)) for p in paths])
    assert kept == paths and not bad and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch.shape == want.shape == (7, 3, prep["image_resize"], prep["image_resize"])
    assert np.array_equal(batch, want)
    one_size = [paths[1], paths[4], paths[6]]   # one group: the batched call alone
    assert np.array_equal(decode_batch(one_size, pipeline)[0], want[[1, 4, 6]])


class _ShapeRecorder:
    """A stand-in runtime: its logits a fixed projection of each image's pixels; it records the batch sizes."""

    def __init__(self, pad_batches):
        self.pad_batches, self.shapes = pad_batches, []
        self.w = np.random.default_rng(0).standard_normal((3 * 32 * 32, 10)).astype(np.float32)

    def __call__(self, batch):
        self.shapes.append(batch.shape[0])
        return batch.reshape(len(batch), -1) @ self.w


def test_a_runtime_that_compiles_per_batch_size_gets_one_size(tiny_export):
    """GraphCell compiles again at each new batch size (150 ms for the digits model), so its short last
    batch is padded to the batch size; the padding never reaches the results. Other runtimes get the
    short batch as it is, and a folder smaller than one batch is one batch of its own size."""
    from slab_ms.deploy import classify, list_images, load_meta
    digits, model_file = tiny_export[0], tiny_export[3]
    meta = load_meta(model_file)
    paths = list_images(os.path.join(digits, "val"))[:20]
    plain, padded = _ShapeRecorder(False), _ShapeRecorder(True)

    def same(got, want):   # labels exactly; probabilities to float32 rounding (BLAS may block by batch size)
        assert [(r["image"], [lab for lab, _ in r["top"]]) for r in got] == \
            [(r["image"], [lab for lab, _ in r["top"]]) for r in want]
        np.testing.assert_allclose([[q for _, q in r["top"]] for r in got], [[q for _, q in r["top"]] for r in want],
                                   rtol=1e-5, atol=1e-7)

    want = list(classify(plain, paths, meta, batch_size=16))
    same(list(classify(padded, paths, meta, batch_size=16)), want)
    assert plain.shapes == [16, 4] and padded.shapes == [16, 16]
    assert [r["image"] for r in want] == paths and len({r["top"][0][0] for r in want}) > 1
    small = _ShapeRecorder(True)
    same(list(classify(small, paths[:5], meta, batch_size=16)), want[:5])
    assert small.shapes == [5]


def test_infer_skips_and_counts_undecodable_images(tiny_export, tmp_path):
    """As validate.py: a folder's undecodable images are skipped, named and counted; --strict stops at the
    first, and one undecodable image alone is a one-line error naming it."""
    digits, net, ckpt, model_file, config, cfg = tiny_export
    val0 = os.path.join(digits, "val", "0")
    good = sorted(os.listdir(val0))[:3]
    folder = tmp_path / "imgs" / "0"
    folder.mkdir(parents=True)
    for name in good:
        (folder / name).write_bytes(open(os.path.join(val0, name), "rb").read())
    jpeg, png = undecodable_images(os.path.join(val0, good[0]))   # MindSpore's own Decode segfaults on the JPEG
    (folder / "b_damaged.jpg").write_bytes(jpeg)
    (folder / "c_damaged.png").write_bytes(png)
    (folder / "d_empty.png").write_bytes(b"")
    bad = [str(folder / n) for n in ("b_damaged.jpg", "c_damaged.png", "d_empty.png")]
    p = infer("--model_file", model_file, "--images", str(tmp_path / "imgs"), "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["images"] == 3 and result["bad_images"] == 3
    assert [r["image"] for r in result["skipped"]] == bad
    assert all(r["error"].startswith("cannot decode image (") for r in result["skipped"])
    assert sorted(r["image"] for r in result["predictions"]) == sorted(str(folder / n) for n in good)
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 3 and all(b in w for b, w in zip(bad, warnings)), p.stderr[-2000:]
    # the good images get the predictions they get alone
    alone = infer("--model_file", model_file, "--images", os.path.join(val0, good[1]), "--quiet")
    want = json.loads(alone.stdout.strip().splitlines()[-1])["predictions"][0]["top"]
    got = next(r for r in result["predictions"] if r["image"].endswith(good[1]))["top"]
    assert [lab for lab, _ in got] == [lab for lab, _ in want]
    np.testing.assert_allclose([q for _, q in got], [q for _, q in want], atol=1e-6)

    p = infer("--model_file", model_file, "--images", str(tmp_path / "imgs"), "--strict")
    assert "cannot decode image" in one_line_error(p, bad[0])
    p = infer("--model_file", model_file, "--images", bad[0])
    assert "cannot decode image" in one_line_error(p, bad[0])


def test_infer_errors_name_the_file(tiny_export, tmp_path, capfd):
    """Every refusal is one stderr line naming its file: a damaged or empty MindIR (not MindSpore's C++
    log), a checkpoint in place of an export, a file without its export record, a Lite 2.0 form for
    GraphCell, a missing image folder. (infer.py's main in this process; capfd sees C++ logs too.)"""
    from slab_ms.cli.infer import main
    digits, net, ckpt, model_file, config, cfg = tiny_export
    val = os.path.join(digits, "val")
    data = open(model_file, "rb").read()
    meta = json.load(open(model_file + ".json"))

    def model_copy(name, blob, sidecar=meta):
        path = tmp_path / name
        path.write_bytes(blob)
        if sidecar is not None:
            (tmp_path / (name + ".json")).write_text(json.dumps(sidecar))
        return str(path)

    def error(model, *extra, images=val):
        capfd.readouterr()
        code = main(["--model_file", model, "--images", images, *extra])
        lines = capfd.readouterr().err.strip().splitlines()
        about = model if images == val else images   # the file the error is about
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and about in lines[0], lines
        return lines[0]

    truncated = model_copy("truncated.mindir", data[: len(data) // 2])
    assert "not a MindIR model (damaged" in error(truncated)
    junk = model_copy("junk.mindir", np.random.default_rng(0).bytes(4096))
    for runtime in ("mindspore", "lite-cpp", "auto"):
        assert "not a MindIR model (damaged" in error(junk, "--runtime", runtime)
    assert "empty file" in error(model_copy("empty.mindir", b""))
    assert "is a checkpoint, not an exported model: export it first (python export.py" in error(ckpt)
    renamed = model_copy("weights.mindir", open(ckpt, "rb").read(), sidecar=None)   # a checkpoint by content
    assert "is a checkpoint" in error(renamed)
    assert "no preprocessing known" in error(model_copy("bare.mindir", data, sidecar=None))
    lite = model_copy("lite.mindir", data, sidecar=dict(meta, mindir_compat="2.0"))
    assert "written for Lite 2.0" in error(lite, "--runtime", "mindspore")
    assert "no such file or folder" in error(model_file, images=str(tmp_path / "nowhere"))


def test_infer_refuses_bad_input(tmp_path):
    bogus = tmp_path / "x.mindir"
    bogus.write_bytes(b"not a model")
    cases = [(["--model_file", str(tmp_path / "none.mindir"), "--images", str(tmp_path)], "no such file"),
             (["--model_file", str(bogus), "--images", str(tmp_path)], "not a MindIR model"),
             (["--model_file", str(bogus), "--images", str(tmp_path), "--batch_size", "0"], "at least 1")]
    for extra, pattern in cases:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), *extra], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        code = 2 if "--batch_size" in extra else 1   # a bad flag exits 2, a bad file 1
        assert p.returncode == code and pattern in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]
        assert "Traceback" not in p.stderr
