"""Process settings that must be in place before MindSpore is imported."""
import os
import sys


def configure_onednn():
    """Cap oneDNN at AVX2 on AMD CPUs unless the user chose an ISA.

    On AMD CPUs oneDNN picks a reference-speed convolution kernel for MindSpore's CPU
    backend (measured ~100x slower on a 3x3 conv; SLA's depthwise 5x5 conv and the
    patch-embedding conv suffer). The variable only takes effect if set before MindSpore
    loads oneDNN, so ``slab_ms`` sets it on import when MindSpore is not loaded yet.
    """
    if "ONEDNN_MAX_CPU_ISA" in os.environ or "mindspore" in sys.modules:
        return
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info = f.read(65536)
    except OSError:
        return
    if "AuthenticAMD" in info and " avx2" in info:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"


def cache_dir(*parts):
    """``$XDG_CACHE_HOME/slab_ms/<parts>`` (default ``~/.cache/slab_ms/<parts>``): where slab_ms keeps
    what it can rebuild (content-check results, the Lite runtime; scripts/get_lite.sh uses the same)."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "slab_ms", *parts)


def quiet_cell_teardown():
    """Keep MindSpore's ``Cell.__del__`` from printing ``Exception ignored ... AttributeError:
    'NoneType' object has no attribute 'total_instance_count'`` for every cell alive at interpreter exit.

    Why: at exit Python clears each module's globals (sets them to None) in reverse import order,
    and ``__main__`` goes after ``mindspore.nn.cell``. A cell still referenced from the script's
    globals (``net = create_model(...)``) is destroyed after that, and its ``__del__`` looks up
    ``Cell`` and ``cells_compile_cache`` in the cleared module: an AttributeError per cell, which
    Python prints and ignores. Any MindSpore model kept to the end of a script does it, mindcv's
    included. Nothing is lost, the process is ending; only the message is noise.

    What this does: an ``atexit`` hook, which runs before the module teardown, wraps
    ``Cell.__del__`` so that an AttributeError or TypeError (a global already gone) is dropped. Until
    then MindSpore's ``__del__`` runs unchanged; after the hook it still runs and does its work
    wherever the globals are intact.
    """
    import atexit

    def wrap():
        cell = sys.modules.get("mindspore.nn.cell")
        original = getattr(getattr(cell, "Cell", None), "__del__", None)
        if original is None or getattr(original, "_slab_ms_quiet", False):
            return

        def __del__(self, _original=original):
            try:
                _original(self)
            except (AttributeError, TypeError):   # the module's globals are None during teardown
                pass
        __del__._slab_ms_quiet = True
        cell.Cell.__del__ = __del__

    atexit.register(wrap)
