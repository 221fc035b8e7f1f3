"""MindSpore Lite for real: MindIR exported by MindSpore 2.10 with ``--mindir-compat 2.0`` runs in
Lite 2.0.0's C++ runtime (slab_ms/deploy/lite_runner, built by scripts/get_lite.sh, which scripts/test.sh
runs first) and gives MindSpore's logits; infer.py --runtime lite-cpp scores the digits as the
validation pipeline does, through one runner process per call that ends with its Python process;
unknown ops, damaged files and a crashed runner are one-line errors. Under CI=true a missing runner
fails these tests instead of skipping them."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import mindspore as ms
from mindspore.train import mind_ir_pb2

from slab_ms.deploy import LiteCppRunner, LiteRunnerError, build_for_export, default_lite_runner, export_model
from slab_ms.engine import data as data_lib
from slab_ms.deploy.mindir import CompatError, convert_file

from slab_ms.layers.common import GELU, GELU_LOGIT_COEFFS

from conftest import ROOT, SMALL_VARIANTS, randomize_ms, rel_err, tiny_digits_model

RUNNER = default_lite_runner()
CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture
def lite_runner():
    """The built runner. Without it a developer's run skips, and a CI run (CI=true) fails: CI must not pass
    with deployment untested (scripts/test.sh fails first when get_lite.sh cannot build it)."""
    if RUNNER is None:
        msg = "Lite runner not built (bash scripts/get_lite.sh)"
        if CI:
            pytest.fail(f"CI=true: {msg}; the Lite tests must run in CI")
        pytest.skip(msg)
    return RUNNER


needs_lite = pytest.mark.usefixtures("lite_runner")
# one fused model per family, dynamic batch: Swin with SLA and softmax, DeiT with softmax and SLA, PVT with
# spatial reduction and with SLA, CSwin
FAMILIES = ["slab_swin_tiny", "swin_tiny_prepbn", "deit_tiny_prepbn", "slab_deit_tiny", "pvt_tiny_prepbn",
            "slab_pvt_tiny", "slab_cswin_tiny"]


def _export_compat(name, out, **kw):
    net, meta = build_for_export(name, overrides=kw, dynamic_batch=True, reparam=True)
    randomize_ms(net, seed=3, bias_scale=0.2)
    net.set_train(False)
    export_model(net, meta, out, mindir_compat="2.0")
    return net


def _lite(model_file, x, tmp_path):
    src, dst = str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    np.save(src, x)
    p = subprocess.run([RUNNER, model_file, src, dst], capture_output=True, text=True, timeout=300)
    return p, (np.load(dst) if p.returncode == 0 else None)


def _infer(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "infer.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


@needs_lite
@pytest.mark.parametrize("name", FAMILIES)
def test_lite_runtime_gives_mindspores_logits(name, tmp_path):
    """A file run (lite_runner MODEL IN.npy OUT.npy) and one serving process (--serve, what infer.py uses)
    that resizes between batches of 1 and 3 give MindSpore's logits; every BiasAdd (random biases) is
    folded into its MatMul or conv, and every GELU is one GeLU kernel."""
    model_file = str(tmp_path / f"{name}.mindir")
    net = _export_compat(name, model_file, **SMALL_VARIANTS[name])
    with open(model_file, "rb") as f:
        written = mind_ir_pb2.ModelProto.FromString(f.read())
    ops = {p.name: p.op_type for p in written.primitives}
    assert "BiasAdd" not in ops.values()   # folded into their MatMul or Conv2D
    gelus = sum(isinstance(c, GELU) for _, c in net.cells_and_names())
    assert gelus and [ops.get(n.op_type[len("REF::"):]) for n in written.graph.node].count("GeLU") == gelus
    assert "Sigmoid" not in ops.values()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in (3, 1, 3)]
    p, got = _lite(model_file, xs[0], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    want = net(ms.Tensor(xs[0])).asnumpy()
    assert got.shape == want.shape and rel_err(got, want) < 1e-5, rel_err(got, want)
    with LiteCppRunner(model_file, "cpu", threads=2) as runner:
        pid = runner._proc.pid
        for x in xs:
            got, want = runner(x), net(ms.Tensor(x)).asnumpy()
            assert got.shape == want.shape and rel_err(got, want) < 1e-5, (x.shape, rel_err(got, want))
        assert runner._proc.pid == pid and len(runner.times) == 3
    assert runner._proc is None


class _OtherPolynomial(GELU):
    """The same chain with one coefficient changed: not the GELU, so not fused."""

    def __init__(self):
        super().__init__()
        self.coeffs = GELU_LOGIT_COEFFS[:3] + (GELU_LOGIT_COEFFS[3] * 1.01,) + GELU_LOGIT_COEFFS[4:]


class _Branches(ms.nn.Cell):
    """Our GELU, a near-miss polynomial, and a GELU whose x*x is read outside the chain."""

    def __init__(self):
        super().__init__()
        self.gelu, self.other, self.shared = GELU(), _OtherPolynomial(), GELU()

    def construct(self, x):
        y = x * 0.5   # (MindSpore merges equal subexpressions: each chain gets an input of its own)
        return self.gelu(x) + self.other(x + 1.0) + self.shared(y) + y * y


def test_gelu_fusion_takes_only_the_exact_chain(tmp_path):
    """The Lite 2.0 rewrite turns the GELU's polynomial chain into one GeLU(approximate=False), and leaves
    a chain with another coefficient, or one whose intermediate is read elsewhere, as it is."""
    ms.set_context(mode=ms.GRAPH_MODE)
    src, dst = str(tmp_path / "b.mindir"), str(tmp_path / "b20.mindir")
    ms.export(_Branches(), ms.Tensor(shape=[None, 8], dtype=ms.float32), file_name=src[:-len(".mindir")],
              file_format="MINDIR")
    convert_file(src, dst)
    with open(dst, "rb") as f:
        written = mind_ir_pb2.ModelProto.FromString(f.read())
    ops = {p.name: p for p in written.primitives}
    called = [ops[n.op_type[len("REF::"):]] for n in written.graph.node if n.op_type.startswith("REF::")]
    gelus = [p for p in called if p.op_type == "GeLU"]
    assert len(gelus) == 1 and [(a.name, a.i) for a in gelus[0].attribute] == [("approximate", 0)]
    assert [p.op_type for p in called].count("Sigmoid") == 2   # the two that must stay


@pytest.fixture(scope="module")
def digits_lite(tmp_path_factory):
    """The tiny digits model exported with --mindir-compat 2.0 (needs no Lite): ``(digits, cfg, net, model_file)``."""
    tmp = tmp_path_factory.mktemp("digits_lite")
    digits, config, cfg, net, ckpt = tiny_digits_model(tmp)
    model_file = str(tmp / "tiny.mindir")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), "--config", config, "--ckpt_path", ckpt,
                        "--reparam", "--dynamic-batch", "--mindir-compat", "2.0", "--output", model_file],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return digits, cfg, net, model_file


@needs_lite
def test_infer_lite_cpp_scores_the_digits_as_validation_does(digits_lite, tmp_path):
    """Through one runner process for the whole call (three batches: 128, 128, 108)."""
    digits, cfg, net, model_file = digits_lite
    logits = np.concatenate([net(x).asnumpy() for x, _ in data_lib.eval_batches(data_lib.eval_loader(cfg))])
    starts = tmp_path / "starts.log"
    counting = tmp_path / "counting_runner.sh"   # the real runner, counting its starts
    counting.write_text(f'#!/bin/sh\necho start >> "{starts}"\nexec "{RUNNER}" "$@"\n')
    counting.chmod(0o755)
    p = _infer("--model_file", model_file, "--images", os.path.join(digits, "val"), "--runtime", "lite-cpp",
               "--batch_size", "128", "--quiet", env=dict(os.environ, SLAB_LITE_RUNNER=str(counting)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("runtime: mindspore_lite C++ (lite_runner) (cpu)")
    assert starts.read_text().split() == ["start"]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    labels = np.array([int(os.path.basename(os.path.dirname(f))) for f in
                       sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(digits, "val")) for f in fs)])
    assert result["images"] == 364
    sec = result["seconds"]   # the runner's own Predict time, in the runner process: less than the call's
    assert 0 < sec["runtime_first_batch"] < sec["runtime"] < sec["last_result"]
    assert result["top1"] == [str(i) for i in logits.argmax(1)]
    assert result["folder_top1"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)), abs=1e-9)


@needs_lite
def test_two_batches_in_flight_come_back_in_order(digits_lite):
    """The runner holds a second batch while it runs one (infer.py decodes the next meanwhile): both are
    answered, in order, as they are alone; a third before a collect is refused; a batch too large for
    two in the input pipe is held alone."""
    net, model_file = digits_lite[2], digits_lite[3]
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in (16, 5))
    with LiteCppRunner(model_file, "cpu", threads=1) as runner:
        assert runner.depth(a) == 2 and runner.depth(b) == 2
        runner.submit(a)
        runner.submit(b)
        with pytest.raises(RuntimeError, match="before submitting more than depth"):
            runner.submit(a)
        got_a, got_b = runner.collect(), runner.collect()
        for got, x in ((got_a, a), (got_b, b)):
            want = net(ms.Tensor(x)).asnumpy()
            assert got.shape == want.shape and rel_err(got, want) < 1e-5
        assert len(runner.times) == 2 and runner.depth(np.zeros((runner._pipe // 8, 1), np.float32)) == 1


def _threads(pid):
    """``{thread id: (CPU time in ticks, the CPUs it may run on, e.g. "0-1")}`` of process ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            cpus = next(ln.split(":")[1].strip() for ln in f if ln.startswith("Cpus_allowed_list"))
        out[tid] = (int(fields[11]) + int(fields[12]), cpus)
    return out


@needs_lite
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to split")
def test_the_runner_and_the_decoder_get_cores_of_their_own(digits_lite):
    """make_runner(own_cores=True), what infer.py asks for: with Lite's threads fewer than the CPUs,
    the runner's threads that work run on the first CPUs (Lite binds its kernel threads there
    itself; an idle one of its own it binds elsewhere) and the calling thread on the others; with
    no CPU to spare both keep every CPU. The runner refuses a --cpus that is not a CPU list."""
    from slab_ms.deploy import make_runner
    model_file = digits_lite[3]
    cpus = sorted(os.sched_getaffinity(0))
    x = np.zeros((4, 3, 32, 32), np.float32)
    try:
        runner, _ = make_runner(model_file, "cpu", "lite-cpp", threads=1, own_cores=True)
        with runner:
            assert runner(x).shape == (4, 10)   # built: Lite's threads exist
            before = _threads(runner._proc.pid)
            for _ in range(300):
                runner(x)
            after = _threads(runner._proc.pid)
            worked = {tid: cpus_of for tid, (ticks, cpus_of) in after.items() if ticks > before[tid][0] + 2}
            assert worked and set(worked.values()) == {str(cpus[0])}, after
            assert after[str(runner._proc.pid)][1] == str(cpus[0])   # the process itself
            assert sorted(os.sched_getaffinity(0)) == cpus[1:]
    finally:
        os.sched_setaffinity(0, cpus)
    runner, _ = make_runner(model_file, "cpu", "lite-cpp", threads=len(cpus), own_cores=True)
    with runner:
        assert runner(x).shape == (4, 10)
        assert "--cpus" not in runner._proc.args and sorted(os.sched_getaffinity(0)) == cpus
    p = subprocess.run([RUNNER, model_file, "--serve", "--cpus", "1,x"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip() == "error: --cpus: not a CPU list: 1,x", p.stderr


def _ended(pid):
    """Whether a process is gone (or a zombie left to a parent that is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@needs_lite
def test_the_runner_process_ends_with_its_python_process(digits_lite):
    """Killing the Python side (no close, no atexit) ends the runner: its stdin reaches end of input."""
    model_file = digits_lite[3]
    code = ("import os, signal, numpy as np\n"
            "from slab_ms.deploy import LiteCppRunner\n"
            f"r = LiteCppRunner({model_file!r}, 'cpu', threads=1)\n"
            "assert r(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)\n"
            "print(r._proc.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    pid = int(p.stdout.split()[0])
    deadline = time.time() + 20
    while not _ended(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert _ended(pid)


def _fake_runner(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_a_failing_or_crashed_runner_is_one_line_naming_the_model(tmp_path):
    """Without Lite: stand-in runners that fail with their own error line, crash, or exit silently."""
    x = np.zeros((2, 3, 32, 32), np.float32)
    cases = [("says.sh", "echo 'some log line' >&2; echo 'error: Predict failed on a batch' >&2; exit 1",
              "m.mindir: Predict failed on a batch"),
             ("crashes.sh", "kill -SEGV $$", "the Lite runner was killed by SIGSEGV on a batch of shape [2, 3, 32, 32] "
                                             "running m.mindir"),
             ("exits.sh", "head -c 24616 > /dev/null; exit 3",   # reads the whole request, answers nothing
              "the Lite runner exited with status 3 without an answer on a batch of shape [2, 3, 32, 32] running "
              "m.mindir")]
    for name, body, message in cases:
        runner = LiteCppRunner("m.mindir", "cpu", runner=_fake_runner(tmp_path, name, body))
        with pytest.raises(LiteRunnerError) as e:
            runner(x)
        assert str(e.value) == message
        assert runner._proc is None   # the next batch starts a new process
        runner.close()


def test_infer_with_a_crashing_runner_is_one_line(digits_lite, tmp_path):
    digits, cfg, net, model_file = digits_lite
    crash = _fake_runner(tmp_path, "crash.sh", "head -c 100 > /dev/null; kill -KILL $$")
    p = _infer("--model_file", model_file, "--images", os.path.join(digits, "val", "3"), "--runtime", "lite-cpp",
               env=dict(os.environ, SLAB_LITE_RUNNER=crash))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("error: the Lite runner was killed by SIGKILL on a batch of shape [16, 3, 32, 32] "
                               f"running {model_file}"), lines


def test_compat_rewrite_names_an_unknown_op(tmp_path):
    src = str(tmp_path / "m.mindir")
    export_model(*build_for_export("slab_deit_tiny", overrides=SMALL_VARIANTS["slab_deit_tiny"], dynamic_batch=True,
                                   reparam=True), src)
    m = mind_ir_pb2.ModelProto()
    with open(src, "rb") as f:
        m.ParseFromString(f.read())
    prim = next(p for p in m.primitives if p.op_type == "ReLU")   # SLA's kernel
    prim.op_type = "FancyReLU"
    with open(src, "wb") as f:
        f.write(m.SerializeToString())
    with pytest.raises(CompatError, match="^ops not in the Lite 2.0 compat table: FancyReLU$"):
        convert_file(src, str(tmp_path / "out.mindir"))
    assert not (tmp_path / "out.mindir").exists()
    (tmp_path / "junk.mindir").write_bytes(b"\x00not a model" * 10)
    with pytest.raises(CompatError, match="cannot read MindIR"):
        convert_file(str(tmp_path / "junk.mindir"), str(tmp_path / "out.mindir"))


@needs_lite
def test_a_damaged_mindir_is_a_one_line_error_not_a_crash(tmp_path):
    good = str(tmp_path / "good.mindir")
    _export_compat("slab_deit_tiny", good, **SMALL_VARIANTS["slab_deit_tiny"])
    data = open(good, "rb").read()
    x = np.zeros((1, 3, 224, 224), np.float32)
    for name, blob in (("truncated", data[: len(data) // 2]), ("random", np.random.default_rng(0).bytes(4096)),
                       ("empty", b"")):
        path = str(tmp_path / f"{name}.mindir")
        with open(path, "wb") as f:
            f.write(blob)
        p, _ = _lite(path, x, tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (name, p.stderr[-1000:])
