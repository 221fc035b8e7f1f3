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
