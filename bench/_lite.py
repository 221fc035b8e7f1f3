"""Timing a MindIR through MindSpore Lite's C++ runtime (the runner of slab_ms/deploy/lite_runner, built
by scripts/get_lite.sh), shared by bench_speed.py ("lite fused" rows) and bench_zoo.py. Imports no
framework: the runner is a separate process (Lite 2.0 and MindSpore cannot share one)."""
import json
import os
import statistics
import subprocess
import time

import numpy as np


def lite_version(runner):
    """The Lite release the runner was built against: scripts/get_lite.sh keeps it in a folder
    named ``lite-X.Y.Z``; None when the folder says nothing."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(runner)))
    return folder[len("lite-"):] if folder.startswith("lite-") else None


def time_lite_runner(runner, mindir, batches, repeats, size, threads, tmp, rounds=1):
    """Per batch size: ``b{b}_ms`` (latency, ms) and ``b{b}_ips`` (images/s) from the runner's own mean
    Predict time over ``repeats`` calls after its first (``max(2, repeats // 2)`` at batches above
    1), the median over ``rounds`` runner processes; ``first_call_s`` for the first batch
    size: one whole run (process start, Build, one Predict), the median over the rounds too; with
    ``rounds`` > 1, ``b{b}_rounds_ms`` lists each round's latency.
    ``mindir`` must be a file Lite builds (``--mindir-compat 2.0``); ``tmp`` holds the inputs."""
    out = {}
    for b in batches:
        src, dst = os.path.join(tmp, "in.npy"), os.path.join(tmp, "out.npy")
        np.save(src, np.random.default_rng(b).standard_normal((b, 3, size, size)).astype(np.float32))
        cmd = [runner, mindir, src, dst, "--threads", str(threads)]
        firsts, means = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            firsts.append(time.perf_counter() - t)
            p = subprocess.run(cmd + ["--repeat", str(repeats if b == 1 else max(2, repeats // 2))],
                               check=True, capture_output=True, text=True)
            means.append(json.loads(p.stdout.strip().splitlines()[-1])["predict_ms"] / 1000)
        med = statistics.median(means)
        if b == batches[0]:
            out["first_call_s"] = statistics.median(firsts)
        out[f"b{b}_ms"] = 1000 * med
        out[f"b{b}_ips"] = b / med
        if rounds > 1:
            out[f"b{b}_rounds_ms"] = [1000 * m for m in means]
    return out
