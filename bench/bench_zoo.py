"""The model-zoo table: parameters, GFLOPs at 224x224 and the fused model's batch-1 latency through
MindSpore Lite's C++ runtime, for the classification models of ``slab_ms.list_models()``.

    python bench/bench_zoo.py [--models slab_deit_tiny,...] [--threads 2] [--repeats 20] [--rounds 3]
                              [--out bench/results/zoo.md]

Per model, in a fresh process (MindSpore keeps its memory pool for the life of a process):

- parameters: the trainable parameters of the model as built (``build_for_export``, before the
  fold; the same network ``create_model`` builds). Not counted: the non-trainable ones, i.e.
  BatchNorm's moving mean/variance, PRepBN's schedule counters and any fixed index table
  (``zoo.json`` has their count as ``params_non_trainable``);
- GFLOPs: the multiply-accumulates of the MatMul, Gemm and Conv nodes of the fused model exported
  to ONNX by the project's own export (``build_for_export(fmt="ONNX", reparam=True)`` and
  ``export_model``) at batch 1, 224x224, with shapes from ``onnx.shape_inference``. One
  multiply-accumulate counts as one FLOP, as fvcore and the DeiT/Swin/PVT/CSWin papers count.
  Elementwise ops, softmax, reductions and what is left of the norms are not counted;
- latency: the fused model exported to MindIR for Lite 2.0 with a dynamic batch, as bench_speed.py
  exports it (``build_for_export(reparam=True, dynamic_batch=True)``,
  ``export_model(mindir_compat="2.0")``; the 2.0 rewrite refuses a static-batch DeiT) and run by
  slab_ms/deploy/lite_runner's runner (scripts/get_lite.sh builds it) with ``--threads`` threads:
  the runner's own mean Predict time over ``--repeats`` calls after its first, the median over
  ``--rounds`` runner processes (``bench/_lite.py``, as bench_speed.py's "lite fused" rows).
  ``zoo.json`` also has the first run's time (process start, Build, one Predict).

The 1-minute load average is read before each model (the machine may be shared): it is in the
table. Writes ``--out`` (markdown) and the same name with ``.json``; ``--render`` rewrites the
markdown from that ``.json`` without measuring. The slab_ms revision recorded is the commit of
the checkout slab_ms is loaded from (``--revision`` names it when slab_ms comes from elsewhere,
e.g. a ``git archive`` copy on PYTHONPATH, which keeps a long run off a working tree in flux).
"""
import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from timing import cpu_model  # same directory (imports no framework)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 224

# Published figures of the unmodified architectures (the papers' tables: GFLOPs as multiply-accumulates,
# parameters in millions), for the sanity check: (architecture, GFLOPs, params M).
PUBLISHED = {
    "deit_tiny": ("DeiT-T", 1.3, 5.7), "deit_small": ("DeiT-S", 4.6, 22.1),
    "swin_tiny": ("Swin-T", 4.5, 28.3), "swin_small": ("Swin-S", 8.7, 49.6), "swin_base": ("Swin-B", 15.4, 87.8),
    "pvt_tiny": ("PVT-T", 1.9, 13.2), "pvt_small": ("PVT-S", 3.8, 24.5), "pvt_medium": ("PVT-M", 6.7, 44.2),
    "cswin_tiny": ("CSWin-T", 4.3, 23.0), "cswin_small": ("CSWin-S", 6.9, 35.0),
}


def architecture(name):
    """The key of :data:`PUBLISHED` for a registered model name (``slab_swin_tiny`` -> ``swin_tiny``)."""
    base = name[len("slab_"):] if name.startswith("slab_") else name
    return base[:-len("_prepbn")] if base.endswith("_prepbn") else base


# ----------------------------------------------------------------------------- counting (no MindSpore)
MAC_OPS = ("MatMul", "Gemm", "Conv")


def onnx_macs(path):
    """``{op_type: multiply-accumulates}`` of the MatMul, Gemm and Conv nodes of an ONNX file with
    static shapes (``onnx.shape_inference`` fills the intermediate ones). MatMul: output elements x
    the shared dimension; Gemm: output elements x K (``transA`` honoured); Conv: output elements x
    (input channels / groups) x kernel area. Raises when a counted node's shape is unknown."""
    import onnx
    model = onnx.shape_inference.infer_shapes(onnx.load(path), strict_mode=True)
    graph = model.graph
    shapes = {}
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in graph.initializer:
        shapes[t.name] = list(t.dims)
    macs = dict.fromkeys(MAC_OPS, 0)
    for node in graph.node:
        if node.op_type not in MAC_OPS:
            continue
        out, a, b = shapes.get(node.output[0]), shapes.get(node.input[0]), shapes.get(node.input[1])
        if not out or not a or not b or None in out + a + b:
            raise ValueError(f"{path}: no static shape for {node.op_type} node {node.name!r}")
        if node.op_type == "MatMul":
            k = a[-1]
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            k = a[0] if trans_a else a[1]
        else:   # Conv: weight (out channels, in channels / groups, kernel...)
            k = math.prod(b[1:])
        macs[node.op_type] += math.prod(out) * k
    return macs


# ---------------------------------------------------------------------------- export (MindSpore job)
def export_job(name, folder):
    """Runs in its own process: exports ``name`` fused to ``folder/model.mindir`` (Lite 2.0 form) and
    ``folder/model.onnx``; returns the parameter counts and what the fold left."""
    import slab_ms  # noqa: F401  (oneDNN ISA before MindSpore loads)
    from slab_ms.deploy import build_for_export, export_model
    out = {}
    t = time.perf_counter()
    net, meta = build_for_export(model=name, reparam=True, dynamic_batch=True)
    params = list(net.get_parameters())
    out["params_trainable"] = sum(p.size for p in params if p.requires_grad)
    out["params_non_trainable"] = sum(p.size for p in params if not p.requires_grad)
    meta = export_model(net, meta, os.path.join(folder, "model.mindir"), mindir_compat="2.0")
    out["params_fused"] = sum(p.size for p in net.get_parameters())
    out["norms_left"] = len(meta.get("norms_left") or [])
    out["mindir_export_s"] = time.perf_counter() - t
    t = time.perf_counter()
    net, meta = build_for_export(model=name, fmt="ONNX", reparam=True)
    export_model(net, meta, os.path.join(folder, "model.onnx"))
    out["onnx_export_s"] = time.perf_counter() - t
    return out


# ------------------------------------------------------------------------------------------ driver
def machine_info(threads):
    cpu = cpu_model()

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    spec = importlib.util.find_spec("slab_ms")   # locates the package without running it
    path = list(spec.submodule_search_locations)[0] if spec else None
    return {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu,
            "nproc": os.cpu_count(), "threads": threads, "mindspore": version("mindspore"),
            "onnx": version("onnx"), "python": platform.python_version(),
            "revision": revision(path) if path else None, "slab_ms_path": path}


def revision(package):
    """The commit of the git checkout ``package`` (slab_ms's folder) is in, ``+changes`` when its
    slab_ms/ or bench/ differ from it; None outside a checkout (e.g. a ``git archive`` copy)."""
    top = os.path.dirname(package)

    def git(*cmd):
        p = subprocess.run(["git", "-C", top, *cmd], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None
    if git("rev-parse", "--show-toplevel") != os.path.realpath(top):
        return None
    changed = git("status", "--porcelain", "--", "slab_ms", "bench")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")


def last_error(stderr):
    """The exception line of a failed job's stderr, past the noise MindSpore's ``Cell.__del__``
    prints at interpreter exit."""
    lines = [ln for ln in stderr.strip().splitlines() if "total_instance_count" not in ln]
    found = [ln for ln in lines if re.match(r"[\w.]+(Error|Exception)\b.*:", ln)]
    return (found or lines or ["no output"])[-1]


def measure(name, args, runner):
    """One model: the export job in a fresh process, then the counts and the Lite timing here."""
    from _lite import time_lite_runner
    row = {"load_before": list(os.getloadavg())}
    folder = tempfile.mkdtemp(prefix=f"bench-zoo-{name}-")
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--job", name, "--folder", folder]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            row["error"] = f"export failed (exit {p.returncode}): {last_error(p.stderr)[:300]}"
            return row
        row.update(json.loads(lines[-1]))
        row["macs"] = onnx_macs(os.path.join(folder, "model.onnx"))
        row["gflops"] = sum(row["macs"].values()) / 1e9
        lite = time_lite_runner(runner, os.path.join(folder, "model.mindir"), [1], args.repeats, SIZE, args.threads,
                                folder, rounds=args.rounds)
        row["lite_b1_ms"] = lite["b1_ms"]
        row["lite_b1_rounds_ms"] = lite.get("b1_rounds_ms", [lite["b1_ms"]])
        row["lite_first_run_s"] = lite["first_call_s"]
    except subprocess.TimeoutExpired:
        row["error"] = f"export timed out after {args.timeout} s"
    except subprocess.CalledProcessError as e:
        row["error"] = f"the Lite runner failed (exit {e.returncode}): {(e.stderr or b'')[-300:]!r}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)   # the folder made above
    return row


def table(rows):
    lines = ["| model | params (M) | GFLOPs | Lite b1 latency (ms), median | best round (ms) | "
             "load avg (1 min) before |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        load = f"{r['load_before'][0]:.2f}"
        if "error" in r:
            lines.append(f"| `{name}` | - | - | {r['error']} | - | {load} |")
            continue
        lines.append(f"| `{name}` | {r['params_trainable'] / 1e6:.1f} | {r['gflops']:.2f} | {r['lite_b1_ms']:.1f} | "
                     f"{min(r['lite_b1_rounds_ms']):.1f} | {load} |")
    return "\n".join(lines)


def comparison(rows):
    """The counts against the unmodified architectures' published figures."""
    lines = ["| model | architecture | params (M): here / published | GFLOPs: here / published | GFLOPs ratio |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        ref = PUBLISHED.get(architecture(name))
        if ref is None or "error" in r:
            continue
        arch, gflops, params = ref
        lines.append(f"| `{name}` | {arch} | {r['params_trainable'] / 1e6:.1f} / {params} | {r['gflops']:.2f} / "
                     f"{gflops} | {r['gflops'] / gflops:.2f} |")
    return "\n".join(lines)


def render(record):
    """The markdown of a results record (what ``zoo.json`` holds)."""
    rows, load_end = record["models"], record["load_end"]
    loads = [r["load_before"][0] for r in rows.values()] + [load_end[0]]
    busy = max(loads) >= record["nproc"]
    text = [
        "# Model zoo: parameters, GFLOPs and Lite latency",
        "",
        f"Measured {record['date']} by `{record['command']}` with slab_ms "
        f"{record['revision'] or 'of an unrecorded revision'} (loaded from `{record['slab_ms_path']}`).",
        f"Machine: {record['cpu']}, nproc {record['nproc']}{' (shared with other jobs)' if busy else ''}. MindSpore "
        f"{record['mindspore']}; MindSpore Lite {record['lite']['version']} C++ runtime through "
        f"slab_ms/deploy/lite_runner, {record['threads']} threads; onnx {record['onnx']} for the shapes.",
        f"Load average (1 min) before each model: {min(loads):.2f} to {max(loads):.2f}; at the end "
        f"{load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} (1 / 5 / 15 min)." +
        (" Other processes kept the cores busy (load at or above nproc): the latencies are upper bounds, "
         "above what the same machine gives idle." if busy else ""),
        "",
        table(rows),
        "",
        "- params: trainable parameters of the model as built (before the fold). Not counted: BatchNorm's "
        "moving statistics, PRepBN's schedule counters and fixed index tables (non-trainable; `zoo.json` "
        "`params_non_trainable`).",
        "- GFLOPs: multiply-accumulates (1 MAC = 1 FLOP, as fvcore and the DeiT/Swin/PVT/CSWin papers) of the "
        "MatMul, Gemm and Conv nodes of the fused model's ONNX export (`build_for_export(fmt=\"ONNX\", "
        "reparam=True)` + `export_model`), batch 1, 224x224, shapes from `onnx.shape_inference`. Elementwise "
        "ops, softmax, reductions and what is left of the norms are not counted.",
        f"- Lite b1 latency: the fused model exported with a dynamic batch (`build_for_export(reparam=True, "
        f"dynamic_batch=True)`, `export_model(mindir_compat=\"2.0\")`) run by the Lite C++ runner at batch 1: "
        f"its mean Predict time over {record['repeats']} calls after a first one, median of {record['rounds']} "
        "runner processes, and the fastest of them (less moved by other jobs on a shared machine). The first "
        "run (process start, Build, one Predict) is `lite_first_run_s` in `zoo.json`.",
        "",
        "## Against the published figures of the unmodified architectures",
        "",
        comparison(rows),
        "",
    ]
    return "\n".join(text)


def write(out, record):
    """``out`` (markdown) and the same name with ``.json``; returns the markdown."""
    text = render(record)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return text


def package_facts():
    """``(classification models, Lite runner path or None)``: ``slab_ms.list_models()`` and
    ``slab_ms.deploy.default_lite_runner()``, asked of a child process: this driver loads no
    framework, so that no MindSpore of its own sits beside the Lite runner it times."""
    code = ("import json, slab_ms; from slab_ms.deploy import default_lite_runner; "
            "print(json.dumps([slab_ms.list_models(), default_lite_runner()]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    models, runner = json.loads(p.stdout.strip().splitlines()[-1])
    return models, runner


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help="comma-separated subset of slab_ms.list_models() (default: all)")
    p.add_argument("--threads", type=int, default=2, help="Lite runner threads")
    p.add_argument("--repeats", type=int, default=20, help="timed Predict calls per runner process")
    p.add_argument("--rounds", type=int, default=3, help="runner processes per model (median)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds for one model's export process")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "zoo.md"))
    p.add_argument("--render", action="store_true",
                   help="measure nothing: rewrite --out from the .json next to it (with --revision if given)")
    p.add_argument("--revision", help="the slab_ms revision measured, when slab_ms is not loaded from a git "
                                      "checkout (default: that checkout's commit)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        print(json.dumps(export_job(args.job, args.folder)))
        return 0
    if args.render:
        with open(os.path.splitext(args.out)[0] + ".json") as f:
            record = json.load(f)
        if args.revision:
            record["revision"] = args.revision
        print(write(args.out, record))
        return 0
    from _lite import lite_version
    known, runner = package_facts()
    if not runner:
        p.error("the MindSpore Lite runner is not built: run bash scripts/get_lite.sh (or set SLAB_LITE_RUNNER)")
    names = [m for m in args.models.split(",") if m] or known
    unknown = [m for m in names if m not in known]
    if unknown:
        p.error(f"not a classification model of slab_ms.list_models(): {', '.join(unknown)}")
    command = " ".join(["python bench/bench_zoo.py", *(sys.argv[1:] if argv is None else argv)])
    record = {**machine_info(args.threads), "command": command, "repeats": args.repeats, "rounds": args.rounds,
              "image_size": SIZE, "lite": {"version": lite_version(runner) or "unknown", "runner": runner}}
    if args.revision:
        record["revision"] = args.revision
    rows = {}
    for name in names:
        rows[name] = measure(name, args, runner)
        r = rows[name]
        print(f"{name}: " + (r["error"] if "error" in r else
                             f"{r['params_trainable'] / 1e6:.2f} M, {r['gflops']:.3f} GFLOPs, "
                             f"{r['lite_b1_ms']:.1f} ms (load {r['load_before'][0]:.2f})"), flush=True)
    record.update(load_end=list(os.getloadavg()), models=rows)
    print(write(args.out, record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
