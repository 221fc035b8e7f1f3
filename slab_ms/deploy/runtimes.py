"""The runtimes that run an exported MindIR: MindSpore Lite's Python API, its C++ runtime through
the runner in ``lite_runner/``, and MindSpore's own ``nn.GraphCell``."""
import collections
import contextlib
import os
import signal
import struct
import subprocess
import tempfile
import time
import weakref

try:
    import fcntl   # the runner's pipe size (Linux)
except ImportError:   # pragma: no cover
    fcntl = None

import numpy as np

from .._env import cache_dir
from ..errors import ConfigError


class LiteRunner:
    """MindSpore Lite's Python API (``mindspore_lite``), where it is installed."""
    name = "mindspore_lite"

    def __init__(self, path, device):
        import mindspore_lite as mslite
        self.times = []   # seconds inside predict, per batch
        context = mslite.Context()
        context.target = [device]
        self.model = mslite.Model()
        self.model.build_from_file(path, mslite.ModelType.MINDIR, context)

    def __call__(self, batch):
        inputs = self.model.get_inputs()
        if list(inputs[0].shape) != list(batch.shape):
            self.model.resize(inputs, [list(batch.shape)])
        inputs[0].set_data_from_numpy(batch)
        t = time.perf_counter()
        out = self.model.predict(inputs)[0].get_data_to_numpy()
        self.times.append(time.perf_counter() - t)
        return out


class GraphCellRunner:
    """MindSpore's own MindIR runtime (``nn.GraphCell``)."""
    name = "mindspore nn.GraphCell"
    pad_batches = True   # its first call at a new batch size compiles (150 ms for the digits model): pad instead

    def __init__(self, path, device):
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device({"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}[device])
        self.ms = ms
        self.times = []   # seconds inside the call (input copy, graph run, output copy), per batch
        try:
            self.cell = ms.nn.GraphCell(ms.load(path))
        except RuntimeError as e:   # MindSpore's own words start with its C++ context: keep their first line
            first = (str(e).strip().splitlines() or ["unknown error"])[0]
            raise ConfigError(f"{path}: MindSpore could not load this MindIR ({first})") from None

    def __call__(self, batch):
        t = time.perf_counter()
        out = self.cell(self.ms.Tensor(batch)).asnumpy()
        self.times.append(time.perf_counter() - t)
        return out


class LiteRunnerError(RuntimeError):
    """The Lite C++ runner failed: its own one-line error, or how its process ended."""


def _end(proc):
    """End a runner process: its stdin closed (it exits at the end of its input), killed if it lingers."""
    for f in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):   # a runner that is gone already: nothing to flush to
            f.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()   # the process this runner started, and only that one
        proc.wait()


def _stop(proc, err):
    _end(proc)
    err.close()


class LiteCppRunner:
    """MindSpore Lite's C++ runtime through the runner in ``lite_runner/`` (a separate process: Lite and
    MindSpore 2.10 cannot share one). Needs a MindIR that Lite builds (``export.py --mindir-compat
    2.0`` for PyPI's Lite 2.0) and the runner (``scripts/get_lite.sh`` builds it).

    One runner process serves every batch (``lite_runner MODEL --serve``: the model is built once,
    batches go through its stdin and stdout); it starts here, so the build overlaps what the caller
    does next, and ends with :meth:`close`, the ``with`` block, garbage collection or the interpreter.
    ``submit`` then ``collect`` let the caller prepare the next batch while one runs; calling the
    runner does both. ``cpus``: the CPUs the runner process may use (``--cpus``; default: any).
    Batches submitted are answered in order; :meth:`depth` says how many may be
    waiting at once without a write ever blocking (two where they fit in the enlarged input pipe, so
    the runner starts the next batch the moment one ends). A failure (the runner's own ``error:`` line,
    or its crash) is a :class:`LiteRunnerError` naming the model; the next batch starts a new process."""
    name = "mindspore_lite C++ (lite_runner)"

    def __init__(self, path, device, runner=None, threads=None, cpus=None):
        self.path, self.device, self.cpus = path, device, list(cpus or [])
        self.runner = runner or default_lite_runner()
        if not self.runner or not os.access(self.runner, os.X_OK):
            raise ConfigError("the MindSpore Lite runner is not built: run bash scripts/get_lite.sh (or set "
                              "SLAB_LITE_RUNNER)")
        self.threads = threads or default_lite_threads()
        self.times = []   # the runner's own Predict time (seconds), per batch answered
        self._proc, self._pending = None, collections.deque()   # shapes of the batches submitted, not collected
        self._start()

    def _start(self):
        err = tempfile.TemporaryFile()   # the runner's stderr: a file, so a chatty runner never blocks
        cpus = ["--cpus", ",".join(map(str, self.cpus))] if self.cpus else []
        proc = subprocess.Popen([self.runner, self.path, "--serve", "--device", self.device, "--threads",
                                 str(self.threads), *cpus], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self._proc, self._err = proc, err
        self._pipe = 65536   # Linux's default pipe capacity; raised where the kernel allows
        with contextlib.suppress(AttributeError, OSError):
            self._pipe = fcntl.fcntl(proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        self._finalizer = weakref.finalize(self, _stop, proc, err)

    def depth(self, batch):
        """How many batches like ``batch`` may be submitted before collecting: 2 when two of them fit in
        the input pipe (the writes never block, so the runner and this process never wait on each
        other's pipe), else 1."""
        return 2 if 2 * (batch.nbytes + 8 * batch.ndim + 8) <= self._pipe else 1

    def _fail(self, shape):
        """Raise the runner's error once its process has ended (or been ended) part-way through a batch."""
        proc, err = self._proc, self._err
        self._proc = None
        self._pending.clear()
        self._finalizer.detach()
        _end(proc)
        try:
            err.seek(0)
            text = err.read()[-8192:].decode(errors="replace")
        finally:
            err.close()
        raise LiteRunnerError(self._message(proc.returncode, text, shape))

    def _message(self, code, text, shape):
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith("error: ")]
        if errs:
            msg = errs[-1][len("error: "):]
            return msg if self.path in msg else f"{self.path}: {msg}"
        what = f"on a batch of shape {list(shape)}"
        if code is not None and code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code} without an answer"
        tail = f" ({lines[-1][:200]})" if lines else ""
        return f"the Lite runner {how} {what} running {self.path}{tail}"

    def submit(self, batch):
        """Send one batch (float32, N x C x H x W) to the runner; :meth:`collect` returns its output."""
        batch = np.ascontiguousarray(batch, dtype="<f4")
        if len(self._pending) >= self.depth(batch):
            raise RuntimeError("collect() a batch before submitting more than depth() of them")
        if self._proc is None:
            self._start()
        head = b"SLAB" + struct.pack(f"<I{batch.ndim}q", batch.ndim, *batch.shape)
        self._pending.append(batch.shape)
        try:
            self._proc.stdin.write(head)
            self._proc.stdin.write(memoryview(batch).cast("B"))
            self._proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):   # the runner is gone: say why
            self._fail(batch.shape)

    def collect(self):
        """The output of the oldest batch :meth:`submit` sent and not yet collected (float32)."""
        if not self._pending:
            raise RuntimeError("no batch submitted")
        shape, out = self._pending[0], self._proc.stdout
        try:
            head = out.read(8)
            if len(head) != 8 or head[:4] != b"SLAB":
                self._fail(shape)
            (ndim,) = struct.unpack("<I", head[4:])
            rest = out.read(8 * ndim + 8)
            if len(rest) != 8 * ndim + 8:
                self._fail(shape)
            dims = struct.unpack(f"<{ndim}q", rest[:8 * ndim])
            (ms,) = struct.unpack("<d", rest[8 * ndim:])
            result = np.empty(dims, np.float32)
            view, got = memoryview(result).cast("B"), 0
            while got < result.nbytes:
                n = out.readinto(view[got:])
                if not n:
                    self._fail(shape)
                got += n
        except (OSError, ValueError, struct.error):
            self._fail(shape)
        self._pending.popleft()
        self.times.append(ms / 1000)
        return result

    def __call__(self, batch):
        self.submit(batch)
        return self.collect()

    def close(self):
        """End the runner process (it finishes the batch it is on, if any)."""
        self._proc = None
        self._pending.clear()
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def default_lite_threads():
    """The Lite runner's threads when none are asked for: the CPU count, at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def default_lite_runner():
    """``SLAB_LITE_RUNNER``, else where scripts/get_lite.sh builds it (None when not built)."""
    path = os.environ.get("SLAB_LITE_RUNNER")
    if path:
        return path
    cache = os.environ.get("LITE_CACHE") or cache_dir("lite-2.0.0")
    path = os.path.join(cache, "lite_runner")
    return path if os.access(path, os.X_OK) else None


def _read_mindir(path):
    """``(ModelProto or None, bytes)``: None when the file does not parse as a MindIR with a graph."""
    from mindspore.train import mind_ir_pb2
    with open(path, "rb") as f:
        data = f.read()
    m = mind_ir_pb2.ModelProto()
    try:
        m.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError, UnicodeDecodeError, ...: all mean "not MindIR"
        return None, data
    return (m if len(m.graph.node) else None), data


def _is_checkpoint(data):
    """Whether bytes parse as a MindSpore checkpoint holding at least one named tensor."""
    from mindspore.train import checkpoint_pb2
    c = checkpoint_pb2.Checkpoint()
    try:
        c.ParseFromString(data)
    except Exception:  # as in _read_mindir
        return False
    return len(c.value) > 0 and all(v.tag for v in c.value)


def check_model_file(path):
    """The ``mind_ir_version`` of a MindIR file, read up front so that a file the runtimes cannot load is
    a one-line :class:`ConfigError` naming it (a checkpoint is told to go through export.py first)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--model_file {path}: no such file")
    try:
        m, data = _read_mindir(path)
    except OSError as e:
        raise ConfigError(f"--model_file {path}: cannot read it ({e.strerror})") from None
    if m is not None:
        return m.mind_ir_version
    low = path.lower()
    if low.endswith(".ckpt") or _is_checkpoint(data):
        raise ConfigError(f"{path} is a checkpoint, not an exported model: export it first (python export.py "
                          f"--config CONFIG --ckpt_path {path} --reparam --dynamic-batch --output MODEL.mindir) "
                          f"and pass MODEL.mindir")
    if low.endswith(".onnx"):
        raise ConfigError(f"{path} is ONNX: infer.py runs MindIR (export.py --format MINDIR); run an ONNX "
                          f"export with onnxruntime")
    why = "an empty file" if not data else "damaged, truncated or not a MindIR"
    raise ConfigError(f"{path}: not a MindIR model ({why}); export.py writes one")


def is_lite_compatible(path):
    """Whether a MindIR file is mind_ir_version 1 (what Lite 2.0 builds: ``--mindir-compat 2.0``)."""
    try:
        m, _ = _read_mindir(path)
    except OSError:
        return False
    return m is not None and m.mind_ir_version <= 1


RUNTIMES = ("auto", "lite", "lite-cpp", "mindspore")


def make_runner(path, device, runtime="auto", meta=None, threads=None, own_cores=False):
    """``(runner, note)`` for ``runtime``: ``lite`` (the ``mindspore_lite`` Python package),
    ``lite-cpp`` (the C++ runner of ``lite_runner/``), ``mindspore`` (GraphCell), or ``auto``: the first of those
    that can run this file, with a note saying why the others were not used. ``meta`` (the export
    record) tells a file rewritten for Lite 2.0, which GraphCell cannot run. Close a runner that
    has ``close`` when done (the C++ runner holds a process).

    ``own_cores``: where the C++ runner's threads leave CPUs of this process free (on CPU), the
    runner runs on the first ``threads`` of them (where Lite 2.0 binds its kernel threads anyway)
    and the calling thread, which decodes the next batch, on the others: neither is scheduled onto
    the other's core."""
    compat = bool((meta or {}).get("mindir_compat"))
    refused = (f"{path} was written for Lite 2.0 (export.py --mindir-compat), a form MindSpore's GraphCell "
               f"does not run")
    if runtime == "lite":
        return LiteRunner(path, device), None
    if runtime == "lite-cpp":
        return _lite_cpp(path, device, None, threads, own_cores), None
    if runtime == "mindspore":
        if compat:
            raise ConfigError(refused + ": use --runtime lite-cpp, or export without --mindir-compat")
        return GraphCellRunner(path, device), None
    try:
        import mindspore_lite  # noqa: F401
        return LiteRunner(path, device), None
    except ImportError:
        pass
    runner = default_lite_runner()
    if runner and (compat or is_lite_compatible(path)):
        return _lite_cpp(path, device, runner, threads, own_cores), "mindspore_lite (Python) is not installed"
    if compat:
        raise ConfigError(refused + ", and no Lite runtime is built: run bash scripts/get_lite.sh, or export "
                          "without --mindir-compat")
    why = "no Lite runtime (bash scripts/get_lite.sh builds the C++ one)" if not runner else \
        "the file is not Lite 2.0 compatible (export.py --mindir-compat 2.0 writes one)"
    return GraphCellRunner(path, device), why


def _lite_cpp(path, device, runner, threads, own_cores):
    """A LiteCppRunner; with ``own_cores`` (see :func:`make_runner`) the CPUs split between it and the caller."""
    threads = threads or default_lite_threads()
    cpus = sorted(os.sched_getaffinity(0)) if own_cores and device == "cpu" and hasattr(os, "sched_getaffinity") \
        else []
    if len(cpus) <= threads:   # no CPU to spare for the caller: leave the scheduler to it
        return LiteCppRunner(path, device, runner, threads)
    lite = LiteCppRunner(path, device, runner, threads, cpus=cpus[:threads])   # Lite binds its i-th to CPU i
    os.sched_setaffinity(0, cpus[threads:])   # this thread, and the threads it starts from now on
    return lite
