"""The one timing rule of the benchmarks, without heavy imports (PyTorch-only jobs import it too,
so MindSpore must not load with it)."""
import statistics
import time


def timed(fn, repeats, warmup=1):
    """``(first_call_s, median_s)``: the first call alone, ``warmup`` untimed calls, then the
    median of ``repeats`` timed calls."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return first, statistics.median(runs)


def cpu_model():
    """The CPU's name from /proc/cpuinfo (``platform.processor()`` elsewhere), for a result's machine line."""
    import platform
    name = platform.processor() or platform.machine() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        pass
    return name


def shared_note(loads):
    """``" (shared machine: load at or above the core count)"`` when a 1-minute load average in ``loads``
    reached the number of cores, else ``""``: what a result's load line should say about other jobs."""
    import os
    return " (shared machine: load at or above the core count)" if max(loads) >= (os.cpu_count() or 1) else ""
