"""The runtimes that run an exported MindIR: MindSpore Lite's Python API, its C++ runtime through
the runner in ``lite_runner/``, and MindSpore's own ``nn.GraphCell``."""
import os
import tempfile

import numpy as np

from .._env import cache_dir
from ..errors import ConfigError


class LiteRunner:
    """MindSpore Lite's Python API (``mindspore_lite``), where it is installed."""
    name = "mindspore_lite"

    def __init__(self, path, device):
        import mindspore_lite as mslite
        context = mslite.Context()
        context.target = [device]
        self.model = mslite.Model()
        self.model.build_from_file(path, mslite.ModelType.MINDIR, context)

    def __call__(self, batch):
        inputs = self.model.get_inputs()
        if list(inputs[0].shape) != list(batch.shape):
            self.model.resize(inputs, [list(batch.shape)])
        inputs[0].set_data_from_numpy(batch)
        return self.model.predict(inputs)[0].get_data_to_numpy()


class GraphCellRunner:
    """MindSpore's own MindIR runtime (``nn.GraphCell``)."""
    name = "mindspore nn.GraphCell"

    def __init__(self, path, device):
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device({"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}[device])
        self.ms = ms
        self.cell = ms.nn.GraphCell(ms.load(path))

    def __call__(self, batch):
        return self.cell(self.ms.Tensor(batch)).asnumpy()


class LiteCppRunner:
    """MindSpore Lite's C++ runtime through the runner in ``lite_runner/`` (a separate process: Lite and
    MindSpore 2.10 cannot share one). Needs a MindIR that Lite builds (``export.py --mindir-compat
    2.0`` for PyPI's Lite 2.0) and the runner (``scripts/get_lite.sh`` builds it)."""
    name = "mindspore_lite C++ (lite_runner)"

    def __init__(self, path, device, runner=None, threads=None):
        self.path, self.device = path, device
        self.runner = runner or default_lite_runner()
        if not self.runner or not os.access(self.runner, os.X_OK):
            raise ConfigError("the MindSpore Lite runner is not built: run bash scripts/get_lite.sh (or set "
                              "SLAB_LITE_RUNNER)")
        self.threads = threads or max(1, min(os.cpu_count() or 1, 8))

    def __call__(self, batch):
        import subprocess
        with tempfile.TemporaryDirectory(prefix="slab-lite-") as tmp:   # removed with what it holds
            src, dst = os.path.join(tmp, "in.npy"), os.path.join(tmp, "out.npy")
            np.save(src, np.ascontiguousarray(batch, dtype=np.float32))
            p = subprocess.run([self.runner, self.path, src, dst, "--device", self.device, "--threads",
                                str(self.threads)], capture_output=True, text=True)
            if p.returncode != 0:
                lines = p.stderr.strip().splitlines()
                raise ConfigError(lines[-1][len("error: "):] if lines and lines[-1].startswith("error: ")
                                  else f"the Lite runner failed (exit {p.returncode})")
            return np.load(dst, allow_pickle=False)


def default_lite_runner():
    """``SLAB_LITE_RUNNER``, else where scripts/get_lite.sh builds it (None when not built)."""
    path = os.environ.get("SLAB_LITE_RUNNER")
    if path:
        return path
    cache = os.environ.get("LITE_CACHE") or cache_dir("lite-2.0.0")
    path = os.path.join(cache, "lite_runner")
    return path if os.access(path, os.X_OK) else None


def is_lite_compatible(path):
    """Whether a MindIR file is mind_ir_version 1 (what Lite 2.0 builds: ``--mindir-compat 2.0``)."""
    from mindspore.train import mind_ir_pb2
    m = mind_ir_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            m.ParseFromString(f.read())
    except Exception:  # a damaged file: let the runtime say so
        return False
    return m.mind_ir_version <= 1


RUNTIMES = ("auto", "lite", "lite-cpp", "mindspore")


def make_runner(path, device, runtime="auto"):
    """``(runner, note)`` for ``runtime``: ``lite`` (the ``mindspore_lite`` Python package),
    ``lite-cpp`` (the C++ runner of ``lite_runner/``), ``mindspore`` (GraphCell), or ``auto``: the first of those
    that can run this file, with a note saying why the others were not used."""
    if runtime == "lite":
        return LiteRunner(path, device), None
    if runtime == "lite-cpp":
        return LiteCppRunner(path, device), None
    if runtime == "mindspore":
        return GraphCellRunner(path, device), None
    try:
        import mindspore_lite  # noqa: F401
        return LiteRunner(path, device), None
    except ImportError:
        pass
    runner = default_lite_runner()
    if runner and is_lite_compatible(path):
        return LiteCppRunner(path, device, runner), "mindspore_lite (Python) is not installed"
    why = "no Lite runtime (bash scripts/get_lite.sh builds the C++ one)" if not runner else \
        "the file is not Lite 2.0 compatible (export.py --mindir-compat 2.0 writes one)"
    return GraphCellRunner(path, device), why
