"""End-to-end throughput of ``infer.py`` on a folder against the runtime's own Predict throughput at the
same batch size.

    python bench/bench_infer.py [--batch 16] [--rounds 3] [--threads 1,2] [--cases digits,swin]
                                [--runtimes lite-cpp,mindspore] [--before 91da7fc] [--work DIR]
                                [--out bench/results/infer.md]

Cases (weights random: throughput does not depend on them):

- ``digits``: the 364 validation images of the quickstart (``scripts/make_digits.py``, 32x32 PNG) through
  the quickstart model (configs/quickstart_digits.yaml), fused, dynamic batch;
- ``swin``: 64 synthetic 224x224 JPEG images through the full-size slab_swin_tiny, fused, dynamic batch.

Each model is exported twice with export.py: as is for ``--runtime mindspore`` (GraphCell) and with
``--mindir-compat 2.0`` for ``--runtime lite-cpp`` (MindSpore Lite 2.0's C++ runtime, the runner of
slab_ms/deploy/lite_runner built by scripts/get_lite.sh). ``--runtime lite`` (the mindspore_lite Python
package) is measured when that package imports.

Per case and runtime (lite-cpp once per thread count of ``--threads``: the runner's Predict and
``infer.py --threads`` alike; mindspore with MindSpore's own threads), one round measures, in this order:

- ``predict``: the runtime's own throughput at the batch size: for lite-cpp the runner's median Predict
  time (``lite_runner MODEL IN.npy OUT.npy --threads T --repeat K``), for mindspore a GraphCell in a
  fresh process (median of K calls after two warm-up calls);
- ``folder``: the whole ``infer.py --quiet`` command on the case's folder: its wall time, and from its
  JSON line when the first and the last results came (``seconds``).

From the medians over the rounds: ``whole`` = images / wall time (Python and MindSpore import, model
load or Lite build, decoding, every batch); ``steady`` = (images - batch) / (last result - first
result): the images/s once the first batch is out, start-up excluded. The ratios divide each by
``predict``. ``runtime in the run`` = the same images / the runtime's own time in that command
(``seconds.runtime`` less its first batch); steady divided by it is the share of the time the
runtime was busy, what infer.py's own overhead leaves of it. With ``--before COMMIT`` the lite-cpp
folder run is also timed (first round) with infer.py and slab_ms of that commit (``git archive``),
with its default threads (the row with as many threads as infer.py's default, the CPU count up to 8).
The 1-minute load average is read before each measurement. Writes ``--out`` and the same name with
``.json``.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from timing import cpu_model, shared_note  # same directory (imports no framework)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine_line():
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run(cmd, env=None, cwd=ROOT, timeout=3600):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return p.stdout


def export(args_list, out):
    if not os.path.isfile(out):
        run([sys.executable, os.path.join(ROOT, "export.py"), *args_list, "--reparam", "--dynamic-batch",
             "--output", out])
    return out


def prepare(work, cases):
    """``{case: {"images": folder, "n": count, "mindspore": mindir, "lite-cpp": compat mindir}}``."""
    out = {}
    if "digits" in cases:
        digits = os.path.join(work, "digits")
        run([sys.executable, os.path.join(ROOT, "scripts", "make_digits.py"), "--out", digits])
        config = os.path.join(work, "quickstart_digits.yaml")
        with open(os.path.join(ROOT, "configs", "quickstart_digits.yaml")) as f, open(config, "w") as g:
            g.write(f.read().replace("data_dir: data/digits", f"data_dir: {digits}"))
        out["digits"] = {"images": os.path.join(digits, "val"), "size": 32,
                         "mindspore": export(["--config", config], os.path.join(work, "digits.mindir")),
                         "lite-cpp": export(["--config", config, "--mindir-compat", "2.0"],
                                            os.path.join(work, "digits_lite.mindir"))}
    if "swin" in cases:
        folder = os.path.join(work, "synthetic224")
        if not os.path.isdir(folder):
            code = ("import sys, os, numpy as np; from PIL import Image\n"
                    "os.makedirs(sys.argv[1]); rng = np.random.default_rng(0)\n"
                    "y, x = np.mgrid[0:224, 0:224] / 224.0\n"
                    "for i in range(64):\n"
                    "    base = np.stack([np.sin(6 * x * (1 + c) + i) * np.cos(4 * y + c) for c in range(3)], -1)\n"
                    "    img = np.clip(127 + 90 * base + 30 * rng.standard_normal((224, 224, 3)), 0, 255)\n"
                    "    Image.fromarray(img.astype(np.uint8)).save(os.path.join(sys.argv[1], f'{i:03d}.jpg'), "
                    "quality=90)\n")
            run([sys.executable, "-c", code, folder])
        out["swin"] = {"images": folder, "size": 224,
                       "mindspore": export(["--model", "slab_swin_tiny"], os.path.join(work, "swin.mindir")),
                       "lite-cpp": export(["--model", "slab_swin_tiny", "--mindir-compat", "2.0"],
                                          os.path.join(work, "swin_lite.mindir"))}
    for c in out.values():
        c["files"] = sorted(os.path.join(d, f) for d, _, fs in os.walk(c["images"]) for f in fs
                            if f.lower().endswith((".png", ".jpg")))
        c["n"] = len(c["files"])
    return out


def time_infer(model, images, runtime, batch, env=None, root=ROOT, extra=None):
    t = time.perf_counter()
    out = run([sys.executable, os.path.join(root, "infer.py"), "--model_file", model, "--images", images,
               "--runtime", runtime, "--batch_size", str(batch), "--quiet"] + (extra or []), env=env, cwd=root)
    wall = time.perf_counter() - t
    return wall, json.loads(out.strip().splitlines()[-1])


def predict_ips(runtime, model, batch, size, threads, repeats, work):
    """The runtime's own images/s at ``batch``."""
    x = os.path.join(work, f"x{batch}_{size}.npy")
    if not os.path.isfile(x):
        run([sys.executable, "-c", "import sys, numpy as np; np.save(sys.argv[1], np.random.default_rng(0)"
             ".standard_normal((int(sys.argv[2]), 3, int(sys.argv[3]), int(sys.argv[3]))).astype(np.float32))",
             x, str(batch), str(size)])
    if runtime == "lite-cpp":
        out = run([RUNNER, model, x, os.path.join(work, "y.npy"), "--threads", str(threads), "--repeat",
                   str(repeats)])
        return batch / (json.loads(out.strip().splitlines()[-1])["predict_ms_median"] / 1000)
    code = ("import sys, json, statistics, time, numpy as np, slab_ms, mindspore as ms\n"
            "ms.set_context(mode=ms.GRAPH_MODE)\n"
            "net = ms.nn.GraphCell(ms.load(sys.argv[1])); x = ms.Tensor(np.load(sys.argv[2]))\n"
            "net(x).asnumpy(); net(x).asnumpy(); runs = []\n"
            "for _ in range(int(sys.argv[3])):\n"
            "    t = time.perf_counter(); net(x).asnumpy(); runs.append(time.perf_counter() - t)\n"
            "print(json.dumps(statistics.median(runs)))\n")
    out = run([sys.executable, "-c", code, model, x, str(repeats)])
    return batch / json.loads(out.strip().splitlines()[-1])


def before_tree(commit, work):
    """infer.py and slab_ms of ``commit`` unpacked under ``work`` (git archive), with the cached build
    artefacts it needs: the path to run it from."""
    dest = os.path.join(work, f"before-{commit}")
    if not os.path.isdir(dest):
        os.makedirs(dest)
        archive = subprocess.run(["git", "archive", commit, "infer.py", "slab_ms"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None):
    global RUNNER
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="1,2",
                   help="Lite thread counts, each a row: the runner's Predict and infer.py --threads alike")
    p.add_argument("--cases", default="digits,swin")
    p.add_argument("--runtimes", default="lite-cpp,mindspore")
    p.add_argument("--before", default="", help="a commit whose infer.py started one runner per batch")
    p.add_argument("--work", help="folder for the data and exports (kept; default: a temporary one)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "infer.md"))
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    try:
        threads = [int(t) for t in args.threads.split(",") if t]
    except ValueError:
        p.error(f"--threads {args.threads}: expected thread counts, e.g. 1,2")
    runtimes = [r for r in args.runtimes.split(",") if r]
    RUNNER, default_threads = run([sys.executable, "-c", "import slab_ms; from slab_ms.deploy import "
                                   "default_lite_runner as r, default_lite_threads as t; print(r(), t())"]
                                  ).strip().splitlines()[-1].rsplit(" ", 1)
    default_threads = int(default_threads)
    if "lite-cpp" in runtimes and RUNNER == "None":
        p.error("the MindSpore Lite runner is not built: run bash scripts/get_lite.sh")
    has_lite_py = subprocess.run([sys.executable, "-c", "import mindspore_lite"], capture_output=True).returncode == 0
    if has_lite_py and "lite" not in runtimes:
        runtimes.append("lite")
    work = args.work or tempfile.mkdtemp(prefix="bench-infer-")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ)
    try:
        data = prepare(work, cases)
        before = before_tree(args.before, work) if args.before else None
        rows = {}
        loads = []
        for rnd in range(args.rounds):
            for case in cases:
                c = data[case]
                for rt, t in [(x, t) for x in runtimes for t in (threads if x == "lite-cpp" else [None])]:
                    model = c["lite-cpp" if rt in ("lite-cpp", "lite") else "mindspore"]
                    r = rows.setdefault(f"{case}/{rt}/{t}", {"case": case, "runtime": rt, "threads": t, "n": c["n"],
                                                             "predict": [], "wall": [], "steady": [], "inrun": [],
                                                             "before": [], "load": []})
                    r["load"].append(os.getloadavg()[0])
                    loads.append(os.getloadavg())
                    if rt != "lite":
                        r["predict"].append(predict_ips(rt, model, args.batch, c["size"], t,
                                                        20 if c["size"] < 100 else 3, work))
                    wall, result = time_infer(model, c["images"], rt, args.batch, env,
                                              extra=["--threads", str(t)] if t else None)
                    assert result["images"] == c["n"], (result["images"], c["n"])
                    sec = result["seconds"]
                    r["wall"].append(wall)
                    after_first = c["n"] - min(args.batch, c["n"])
                    r["steady"].append(after_first / (sec["last_result"] - sec["first_result"]))
                    r["inrun"].append(after_first / (sec["runtime"] - sec["runtime_first_batch"]))
                    if before and rt == "lite-cpp" and rnd == 0 and t == default_threads:   # its only count
                        benv = dict(env, PYTHONPATH=before)
                        r["before"].append(time_infer(model, c["images"], rt, args.batch, benv, root=before)[0])
                    print(f"round {rnd + 1} {case}/{rt}" + (f"/{t} threads" if t else "")
                          + f": predict {r['predict'][-1] if r['predict'] else 0:.1f} img/s, "
                          f"folder {wall:.2f} s, steady {r['steady'][-1]:.1f} img/s "
                          f"(runtime in the run {r['inrun'][-1]:.1f})"
                          + (f", before {r['before'][-1]:.2f} s" if r["before"] and rnd == 0 else "")
                          + f" (load {r['load'][-1]:.2f})", flush=True)
        loads.append(os.getloadavg())
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)   # the temporary folder made above
    table = ["| case | runtime | threads | images | predict img/s (runtime's own, batch %d) | infer.py s | "
             "whole img/s | whole / predict | steady img/s | steady / predict | runtime in the run img/s | "
             "steady / in the run | before: infer.py s | load |" % args.batch,
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out_rows = []
    for r in rows.values():
        pred, wall, steady, inrun = med(r["predict"]), med(r["wall"]), med(r["steady"]), med(r["inrun"])
        whole = r["n"] / wall
        busy = med([a / b for a, b in zip(r["steady"], r["inrun"])])
        row = dict(r, predict_ips=pred, wall_s=wall, whole_ips=whole, steady_ips=steady, whole_ratio=whole / pred,
                   steady_ratio=steady / pred, inrun_ips=inrun, steady_inrun_ratio=busy)
        out_rows.append(row)
        before = f"{med(r['before']):.2f}" if r["before"] else ""
        table.append(f"| {r['case']} | {r['runtime']} | {r['threads'] or 'default'} | {r['n']} | {pred:.1f} | "
                     f"{wall:.2f} | {whole:.1f} | "
                     f"{whole / pred:.2f} | {steady:.1f} | {steady / pred:.2f} | {inrun:.1f} | {busy:.2f} | {before} | "
                     f"{min(r['load']):.1f}-{max(r['load']):.1f} |")
    date = datetime.date.today().isoformat()
    machine = machine_line()
    lines = ["# infer.py end to end against the runtime's own Predict", "",
             f"{date}, {machine}; load average (1 min) {min(x[0] for x in loads):.1f}-"
             f"{max(x[0] for x in loads):.1f} over the run{shared_note([x[0] for x in loads])}. "
             f"`python bench/bench_infer.py {' '.join(sys.argv[1:] if argv is None else argv)}`; medians of "
             f"{args.rounds} interleaved rounds.", "", *table, "",
             "- predict: lite-cpp, the runner's median Predict over repeated calls on one batch (`--repeat`); "
             "mindspore, a GraphCell's median call in its own process. infer.py s: the whole `infer.py --quiet` "
             "command on the folder (Python and MindSpore import, model load or Lite build, decoding, batches). "
             f"whole = images / that; steady = (images - {args.batch}) / (last result - first result), from the "
             "command's own `seconds`: the images/s once started. runtime in the run: the same images over the "
             "runtime's own time in that command (`seconds.runtime` less its first batch: the Lite runner's "
             "Predict, GraphCell's call); steady / in the run (median of the rounds' ratios): the share of the "
             "time the runtime was busy.",
             "- threads: Lite's, for the runner's Predict and `infer.py --threads` alike; mindspore runs with "
             "MindSpore's own.",
             "- before: the same command with infer.py and slab_ms of the `--before` commit and its default "
             "threads (the CPU count, up to 8), first round only."
             if args.before else "", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"date": date, "machine": machine, "batch": args.batch, "rounds": args.rounds,
                   "loads": loads, "rows": out_rows}, f, indent=2)
        f.write("\n")
    print("\n".join(lines))
    return 0


RUNNER = None

if __name__ == "__main__":
    sys.exit(main())
