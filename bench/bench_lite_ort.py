"""MindSpore Lite's C++ runtime against onnxruntime on the same fused network, same thread count, one
model of each family; peak memory of Lite, onnxruntime and MindSpore's GraphCell at batch 1.

    python bench/bench_lite_ort.py [--models slab_swin_tiny,slab_deit_tiny,slab_pvt_tiny,slab_cswin_tiny]
                                   [--batches 1,8] [--threads 2] [--pairs 15] [--repeats 10] [--profile]
                                   [--work DIR] [--out bench/results/lite_ort.md]

Per model, in a child process with MindSpore (the driver loads no framework): the full-size network
is built once with random weights, folded (``build_for_export(reparam=True)``) and exported by the
project's export (``export_model``): MindIR with a dynamic batch in Lite 2.0's form
(``mindir_compat="2.0"``) for Lite, as is for GraphCell, and ONNX at each fixed batch for onnxruntime
(MindSpore's ONNX exporter has no dynamic batch). All exports load one checkpoint: one network.

Latency, paired: per model and batch, one Lite process (the runner of slab_ms/deploy/lite_runner in
``--serve`` mode, the model built once, ``--threads T``) and one onnxruntime session in this process
(``intra_op_num_threads=T``, ``inter_op_num_threads=1``, sequential execution, all graph
optimizations) take turns on the same batch, ``--pairs`` times after two warm-up calls each, the
order swapped every other pair and a short pause between calls (the machine may be shared: a pair
sees the same load). Lite's time is the runner's own around Predict, onnxruntime's the wall time
of ``run``. The table has the medians and the median of the per-pair ratios; ``Lite / ORT`` > 1
means Lite is slower. Both outputs are compared (relative difference,
``max|a-b| / max(1, max|b|)``).

Peak RSS (``ru_maxrss`` of the child, ``os.wait4``), batch 1, each runtime in its own process that
loads the model and runs it 5 times: the Lite runner; Python with onnxruntime; Python with MindSpore
and a GraphCell. The same interpreters importing only their runtime give the floor.

``--profile`` (and any model where Lite is slower at some batch): per op type, ms per run of Lite (the
runner's ``--profile``: Lite's kernel callbacks) and of onnxruntime (``enable_profiling``: its
per-node events), at that batch, ``--repeats`` runs each. Writes ``--out`` and the same name with ``.json``.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from timing import cpu_model, shared_note  # same directory (imports no framework)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["slab_swin_tiny", "slab_deit_tiny", "slab_pvt_tiny", "slab_cswin_tiny"]


# ------------------------------------------------------------------------------ child jobs
def export_job(name, folder, batches):
    """In its own process: one network, exported four ways (see the module docstring)."""
    import numpy as np
    import slab_ms  # noqa: F401  (oneDNN ISA before MindSpore loads)
    from slab_ms.checkpoint import save_ms_checkpoint
    from slab_ms.deploy import build_for_export, export_model
    ckpt = os.path.join(folder, "model.ckpt")
    net, meta = build_for_export(model=name, reparam=True, dynamic_batch=True)
    save_ms_checkpoint({k: v.asnumpy() for k, v in net.parameters_and_names()}, ckpt)
    export_model(net, meta, os.path.join(folder, "lite.mindir"), mindir_compat="2.0", force=True)
    net, meta = build_for_export(model=name, ckpt_path=ckpt, reparam=True, dynamic_batch=True)
    export_model(net, meta, os.path.join(folder, "graphcell.mindir"), force=True)
    for b in batches:
        net, meta = build_for_export(model=name, ckpt_path=ckpt, reparam=True, fmt="ONNX", batch=b)
        export_model(net, meta, os.path.join(folder, f"b{b}.onnx"), force=True)
    for b in batches:
        np.save(os.path.join(folder, f"x{b}.npy"),
                np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32))
    return {"exported": True}


def ort_session(path, threads, profile_prefix=None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_job(path, x_path, threads, repeats, out_path=None, profile_prefix=None):
    """In its own process (onnxruntime only): median ms of ``repeats`` runs after a first one; with
    ``profile_prefix``, ms per run per op type from onnxruntime's profile instead."""
    import numpy as np
    sess = ort_session(path, threads, profile_prefix)
    x = np.load(x_path)
    feed = {sess.get_inputs()[0].name: x}
    y = sess.run(None, feed)[0]
    if out_path:
        np.save(out_path, y)
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        runs.append(1000 * (time.perf_counter() - t))
    out = {"median_ms": statistics.median(runs), "mean_ms": statistics.fmean(runs)}
    if profile_prefix:
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        n_runs = sum(1 for e in events if e.get("name") == "model_run") or repeats + 1
        ops = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                op = e.get("args", {}).get("op_name", "?")
                s = ops.setdefault(op, {"ms": 0.0, "kernels": 0})
                s["ms"] += e["dur"] / 1000 / n_runs
                s["kernels"] += 1
        for s in ops.values():
            s["kernels"] = round(s["kernels"] / n_runs)
        out["profile"] = {"ops": ops}
    return out


def rss_job(kind, path, x_path, threads):
    """In its own process: load the model and run it 5 times (``kind`` ort or graphcell), or import only
    (``ort-import``, ``mindspore-import``)."""
    import numpy as np
    if kind == "ort-import":
        import onnxruntime  # noqa: F401
        return {}
    if kind == "mindspore-import":
        import slab_ms  # noqa: F401
        import mindspore  # noqa: F401
        return {}
    x = np.load(x_path)
    if kind == "ort":
        sess = ort_session(path, threads)
        for _ in range(5):
            sess.run(None, {sess.get_inputs()[0].name: x})
    else:
        import slab_ms  # noqa: F401
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        cell = ms.nn.GraphCell(ms.load(path))
        for _ in range(5):
            cell(ms.Tensor(x)).asnumpy()
    return {}


# ------------------------------------------------------------------------------ driver
def child(job, *args, timeout=3600):
    cmd = [sys.executable, os.path.abspath(__file__), "--job", json.dumps([job, *args])]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{job} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def lite(runner, folder, b, threads, repeats, profile=False):
    cmd = [runner, os.path.join(folder, "lite.mindir"), os.path.join(folder, f"x{b}.npy"),
           os.path.join(folder, f"lite_y{b}.npy"), "--threads", str(threads), "--repeat", str(repeats)]
    p = subprocess.run(cmd + (["--profile"] if profile else []), capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"lite_runner failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


class LiteServe:
    """The runner's --serve protocol (see lite_runner.cc), without slab_ms: this driver loads no MindSpore."""

    def __init__(self, runner, model, threads):
        self.proc = subprocess.Popen([runner, model, "--serve", "--threads", str(threads)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def __call__(self, x):
        import numpy as np
        x = np.ascontiguousarray(x, dtype="<f4")
        self.proc.stdin.write(b"SLAB" + struct.pack(f"<I{x.ndim}q", x.ndim, *x.shape) + x.tobytes())
        self.proc.stdin.flush()
        head = self.proc.stdout.read(8)
        if len(head) != 8:
            raise RuntimeError(f"lite_runner --serve ended (exit {self.proc.wait()})")
        (ndim,) = struct.unpack("<I", head[4:])
        rest = self.proc.stdout.read(8 * ndim + 8)
        dims = struct.unpack(f"<{ndim}q", rest[:8 * ndim])
        (ms,) = struct.unpack("<d", rest[8 * ndim:])
        y = np.frombuffer(self.proc.stdout.read(4 * int(np.prod(dims))), "<f4").reshape(dims)
        return ms, y

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


def paired(runner, folder, b, threads, pairs, pause=0.05):
    """``(lite ms list, ort ms list, rel diff)``: the two runtimes in turns on one batch."""
    import numpy as np
    x = np.load(os.path.join(folder, f"x{b}.npy"))
    lite_rt = LiteServe(runner, os.path.join(folder, "lite.mindir"), threads)
    try:
        sess = ort_session(os.path.join(folder, f"b{b}.onnx"), threads)
        feed = {sess.get_inputs()[0].name: x}

        def ort_call():
            t = time.perf_counter()
            y = sess.run(None, feed)[0]
            return 1000 * (time.perf_counter() - t), y
        for _ in range(2):
            _, ly = lite_rt(x)
            _, oy = ort_call()
        diff = float(np.abs(ly - oy).max() / max(1.0, float(np.abs(oy).max())))
        lite_ms, ort_ms = [], []
        for i in range(pairs):
            for rt in (("lite", "ort") if i % 2 == 0 else ("ort", "lite")):
                time.sleep(pause)
                if rt == "lite":
                    lite_ms.append(lite_rt(x)[0])
                else:
                    ort_ms.append(ort_call()[0])
    finally:
        lite_rt.close()
    return lite_ms, ort_ms, diff


def rss_of_job(cmd, fails):
    """In a small process of its own: the peak RSS of ``cmd``, MiB (Linux ru_maxrss is KiB). A child
    started from a large process inherits that process's high-water mark through exec, so the
    driver, which holds onnxruntime sessions by then, never starts the measured command itself."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if (proc.returncode != 0) != fails:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {(err.strip().splitlines() or ['?'])[-1]}")
    return {"mb": usage.ru_maxrss / 1024}


def peak_rss_mb(cmd, fails=False):
    """Peak RSS of ``cmd`` (MiB), measured by a small helper process; ``fails``: it is meant to exit
    with an error."""
    return child("rssof", cmd, fails)["mb"]


def machine_line(threads):
    import importlib.metadata as md
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, MindSpore "
            f"{md.version('mindspore')}, onnxruntime {md.version('onnxruntime')}, Lite 2.0.0 (C++ runner), "
            f"{threads} threads each")


def profile_table(name, b, lite_prof, ort_prof, top=12):
    lines = [f"### {name}, batch {b}", "",
             f"Lite Predict {lite_prof['predict_ms']:.1f} ms (with callbacks), onnxruntime "
             f"{sum(s['ms'] for s in ort_prof['ops'].values()):.1f} ms in nodes.", "",
             "| Lite op type | ms | kernels | | onnxruntime op type | ms | nodes |", "|---|---|---|---|---|---|---|"]
    lo = sorted(lite_prof["ops"].items(), key=lambda kv: -kv[1]["ms"])[:top]
    oo = sorted(ort_prof["ops"].items(), key=lambda kv: -kv[1]["ms"])[:top]
    for i in range(max(len(lo), len(oo))):
        left = f"{lo[i][0]} | {lo[i][1]['ms']:.2f} | {lo[i][1]['kernels']}" if i < len(lo) else " | | "
        right = f"{oo[i][0]} | {oo[i][1]['ms']:.2f} | {oo[i][1]['kernels']}" if i < len(oo) else " | | "
        lines.append(f"| {left} | | {right} |")
    return lines + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=15, help="Lite/onnxruntime call pairs per model and batch")
    p.add_argument("--repeats", type=int, default=10, help="runs per profile")
    p.add_argument("--profile", action="store_true", help="profile every model, not only where Lite is slower")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--work", help="folder for the exports (kept, reused; default: a temporary one)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "lite_ort.md"))
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        job, *rest = json.loads(args.job)
        print(json.dumps({"export": export_job, "ort": ort_job, "rss": rss_job, "rssof": rss_of_job}[job](*rest)))
        return 0
    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    q = subprocess.run([sys.executable, "-c", "import slab_ms; from slab_ms.deploy import default_lite_runner; "
                        "print(default_lite_runner())"], capture_output=True, text=True, check=True)
    runner = q.stdout.strip().splitlines()[-1]
    if runner == "None":
        p.error("the MindSpore Lite runner is not built: run bash scripts/get_lite.sh")
    work = args.work or tempfile.mkdtemp(prefix="bench-lite-ort-")
    started = time.time()
    loads = [os.getloadavg()]
    try:
        folders = {}
        for m in models:
            folders[m] = os.path.join(work, m)
            if not all(os.path.isfile(os.path.join(folders[m], f)) for f in
                       ["lite.mindir", "graphcell.mindir"] + [f"b{b}.onnx" for b in batches]):
                os.makedirs(folders[m], exist_ok=True)
                t = time.perf_counter()
                child("export", m, folders[m], batches)
                print(f"{m}: exported in {time.perf_counter() - t:.0f} s", flush=True)
        rows = []
        for m in models:
            for b in batches:
                load = os.getloadavg()[0]
                lite_ms, ort_ms, diff = paired(runner, folders[m], b, args.threads, args.pairs)
                lm, om = statistics.median(lite_ms), statistics.median(ort_ms)
                ratio = statistics.median(a / o for a, o in zip(lite_ms, ort_ms))
                rows.append({"model": m, "batch": b, "lite_ms": lm, "ort_ms": om, "lite_over_ort": ratio,
                             "lite_calls_ms": lite_ms, "ort_calls_ms": ort_ms, "load": [load, os.getloadavg()[0]],
                             "rel_diff": diff})
                loads.append(os.getloadavg())
                print(f"{m} b{b}: lite {lm:.1f} ms, ort {om:.1f} ms, pair ratio {ratio:.2f}, rel diff {diff:.1e} "
                      f"(load {load:.2f})", flush=True)
        rss = {}
        if not args.no_rss:
            b = batches[0]
            for m in models:
                f = folders[m]
                x = os.path.join(f, f"x{b}.npy")
                me = [sys.executable, os.path.abspath(__file__), "--job"]
                rss[m] = {
                    "lite": peak_rss_mb([runner, os.path.join(f, "lite.mindir"), x, os.path.join(f, "rss_y.npy"),
                                         "--threads", str(args.threads), "--repeat", "5"]),
                    "ort": peak_rss_mb(me + [json.dumps(["rss", "ort", os.path.join(f, f"b{b}.onnx"), x,
                                                         args.threads])]),
                    "graphcell": peak_rss_mb(me + [json.dumps(["rss", "graphcell",
                                                               os.path.join(f, "graphcell.mindir"), x,
                                                               args.threads])])}
                print(f"{m} peak RSS: {rss[m]}", flush=True)
            me = [sys.executable, os.path.abspath(__file__), "--job"]
            rss["_floor"] = {"lite": peak_rss_mb([runner, os.path.join(work, "no-such.mindir"), "x.npy", "y.npy"],
                                                 fails=True),
                             "ort": peak_rss_mb(me + [json.dumps(["rss", "ort-import", "", "", 0])]),
                             "graphcell": peak_rss_mb(me + [json.dumps(["rss", "mindspore-import", "", "", 0])])}
        profiles = {}
        for row in rows:
            if args.profile or row["lite_over_ort"] > 1.0:
                m, b, f = row["model"], row["batch"], folders[row["model"]]
                lp = lite(runner, f, b, args.threads, args.repeats, profile=True)["profile"]
                op = child("ort", os.path.join(f, f"b{b}.onnx"), os.path.join(f, f"x{b}.npy"), args.threads,
                           args.repeats, None, os.path.join(f, f"ort_profile_b{b}"))["profile"]
                profiles[f"{m}/b{b}"] = {"lite": lp, "ort": op}
        loads.append(os.getloadavg())
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)   # the temporary folder made above
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = machine_line(args.threads)
    cmdline = " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# MindSpore Lite against onnxruntime", "",
             f"{date}, {machine}; load average (1 min) {min(x[0] for x in loads):.1f}-"
             f"{max(x[0] for x in loads):.1f} over the run ({(time.time() - started) / 60:.0f} min)"
             f"{shared_note([x[0] for x in loads])}. `python bench/bench_lite_ort.py {cmdline}`. Fused full-size "
             "networks with random weights, "
             f"224x224; {args.pairs} Lite/onnxruntime call pairs per row (medians; the ratio is the median of the "
             "pairs' ratios; IQR: the middle half of the calls).", "",
             "| model | batch | Lite ms | Lite IQR | onnxruntime ms | ORT IQR | Lite / ORT | outputs rel. diff "
             "| load |",
             "|---|---|---|---|---|---|---|---|---|"]

    def iqr(xs):
        q = statistics.quantiles(xs, n=4)
        return f"{q[0]:.0f}-{q[2]:.0f}"
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['lite_ms']:.1f} | {iqr(r['lite_calls_ms'])} | "
                     f"{r['ort_ms']:.1f} | {iqr(r['ort_calls_ms'])} | {r['lite_over_ort']:.2f} | {r['rel_diff']:.1e} | "
                     f"{min(r['load']):.1f}-{max(r['load']):.1f} |")
    if rss:
        floor = rss.get("_floor", {})
        lines += ["", f"## Peak RSS at batch {batches[0]} (MiB, one process each)", "",
                  "| model | Lite C++ runner | onnxruntime (Python) | MindSpore GraphCell (Python) |",
                  "|---|---|---|---|"]
        for m in models:
            lines.append(f"| {m} | {rss[m]['lite']:.0f} | {rss[m]['ort']:.0f} | {rss[m]['graphcell']:.0f} |")
        lines.append(f"| (no model: libraries or imports only) | {floor.get('lite', 0):.0f} | "
                     f"{floor.get('ort', 0):.0f} | {floor.get('graphcell', 0):.0f} |")
    if profiles:
        lines += ["", "## Per op type (ms per run)", ""]
        for key, pr in profiles.items():
            m, b = key.split("/b")
            lines += profile_table(m, int(b), pr["lite"], pr["ort"])
    lines.append("")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"date": date, "machine": machine, "threads": args.threads, "repeats": args.repeats,
                   "pairs": args.pairs, "loads": loads, "rows": rows, "peak_rss_mb": rss, "profiles": profiles},
                  f, indent=2)
        f.write("\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
