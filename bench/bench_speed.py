"""Inference and training speed of the SLAB models: MindSpore (unfused, fused, softmax attention
everywhere) against the PyTorch reference, measured in one run on one machine.

    python bench/bench_speed.py [--models slab_swin_tiny,...] [--batches 1,8,32] [--repeats 5]
                                [--threads N] [--train-batch 8] [--out bench/results]

Rows per model: MindSpore eval of the model as trained (``ms``), re-parameterized (``ms fused``),
the same fused network with softmax attention in every stage (``ms fused SSSS``), the fused
network exported to MindIR (dynamic batch) and run from the file (``ms fused MindIR``), the same
file rewritten for and run by MindSpore Lite 2.0's C++ runtime (``lite fused``, scripts/get_lite.sh
builds the runner; its latency is the runner's own mean Predict time), and the PyTorch reference
(eval, no_grad) with the same thread count. Columns: batch-1 latency (ms,
median), throughput at the larger batches (images/s), first-call time at batch 1 (MindSpore:
graph compile; MindIR: loading the file and compiling it). One training step (forward, backward,
AdamW) at ``--train-batch`` for the first model, MindSpore GRAPH_MODE against PyTorch. Writes
``results.md``, ``results.json`` and ``latency_vs_top1.png`` (batch-1 latency of the fused model
against the published top-1 of SPEC section 7). Ratios are within this run only. Every figure
comes from its own process (MindSpore keeps its CPU memory pool for the life of a process); a
batch that runs out of memory shows OOM.
"""
import argparse
import json
import os
import platform
import sys
import time

import slab_ms  # oneDNN ISA before MindSpore loads
import numpy as np
import mindspore as ms
from timing import timed  # same directory: the benchmarks' one timing rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PUBLISHED_TOP1 = {"slab_swin_tiny": 81.8, "slab_swin_small": 83.6, "swin_tiny_prepbn": 81.4,
                  "deit_tiny_prepbn": 73.6, "deit_small_prepbn": 80.2, "slab_deit_tiny": 74.3,
                  "slab_deit_small": 80.0, "pvt_tiny_prepbn": 76.0, "pvt_small_prepbn": 80.1,
                  "pvt_medium_prepbn": 81.7, "slab_pvt_tiny": 76.5, "slab_cswin_tiny": 82.8}


def measure(call, batches, repeats, size):
    """Latency at batch 1 (ms), throughput at the others (img/s), first-call seconds."""
    out = {}
    for b in batches:
        x = np.random.default_rng(b).standard_normal((b, 3, size, size)).astype(np.float32)
        first, med = timed(lambda x=x: call(x), repeats if b == 1 else max(2, repeats // 2))
        if b == batches[0]:
            out["first_call_s"] = first
        out[f"b{b}_ms"] = 1000 * med
        out[f"b{b}_ips"] = b / med
    return out


def ms_forward(net):
    net.set_train(False)
    return lambda x: net(ms.Tensor(x)).asnumpy()


def mindir_forward(net, size, tmp):
    """The deployed form: ``net`` exported to MindIR with a dynamic batch, run by MindSpore's own
    MindIR runtime (``nn.GraphCell``, what infer.py uses without Lite). Loading the file happens in
    the first call, so the first-call time is what a deployment pays at start-up."""
    path = os.path.join(tmp, "model")
    ms.export(net, ms.Tensor(shape=[None, 3, size, size], dtype=ms.float32), file_name=path, file_format="MINDIR")
    state = {}

    def call(x):
        if "cell" not in state:
            state["cell"] = ms.nn.GraphCell(ms.load(path + ".mindir"))
        return state["cell"](ms.Tensor(x)).asnumpy()
    return call


def lite_measure(net, batches, repeats, size, threads, tmp):
    """The fused network through MindSpore Lite's C++ runtime (slab_ms/deploy/lite_runner's runner,
    built by scripts/get_lite.sh; the MindIR rewritten with --mindir-compat 2.0), timed by
    ``_lite.time_lite_runner``: the first-call time is a whole run (process start, Build, one
    Predict); the latency is the runner's own mean over ``repeats`` Predict calls after the first,
    with ``threads`` threads as the other rows. None when the runner is not built."""
    from slab_ms.deploy import default_lite_runner
    from slab_ms.deploy.mindir import convert_file
    from _lite import time_lite_runner
    runner = default_lite_runner()
    if runner is None:
        return None
    path = os.path.join(tmp, "model")
    ms.export(net, ms.Tensor(shape=[None, 3, size, size], dtype=ms.float32), file_name=path, file_format="MINDIR")
    convert_file(path + ".mindir", path + ".mindir")
    return time_lite_runner(runner, path + ".mindir", batches, repeats, size, threads, tmp)


def torch_forward(model):
    import torch
    model.eval()

    def call(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()
    return call


def ms_train_step(name, batch, size, repeats):
    from mindspore import nn
    from slab_ms.engine.train_step import NetWithLoss, Stepper, make_loss_scaler
    net = slab_ms.create_model(name, img_size=size)
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-4, weight_decay=0.05)
    stepper = Stepper(NetWithLoss(net, nn.CrossEntropyLoss()), opt, loss_scale=make_loss_scaler(1.0), clip_value=5.0,
                      network=net)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    y = ms.Tensor(np.arange(batch, dtype=np.int32) % 10)
    first, med = timed(lambda: stepper.step(x, y), repeats)
    return {"first_call_s": first, "step_s": med}


def torch_train_step(name, batch, size, repeats):
    import torch
    from _reference import load_torch_ref
    torch_ref = load_torch_ref()
    model = torch_ref.create_model(name, img_size=size)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    y = torch.arange(batch) % 10
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    first, med = timed(step, repeats)
    return {"first_call_s": first, "step_s": med}


def softmax_variant(name):
    """The same model with the family's softmax attention in every stage: window attention
    (Swin), multi-head (DeiT: one letter), spatial reduction (PVT), LePE stripes (CSwin)."""
    from slab_ms.models.deit import VisionTransformer
    single = isinstance(slab_ms.create_model(name), VisionTransformer)
    return slab_ms.create_model(name, attn_type="S" if single else "SSSS")


def table(results, batches):
    head = ["model", "variant", f"b{batches[0]} latency ms"] + [f"b{b} img/s" for b in batches[1:]] + \
        ["first call s", "latency vs torch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in results.items():
        torch_lat = rows.get("torch", {}).get(f"b{batches[0]}_ms")

        def fmt(v, digits=1):
            return "OOM" if v is None else f"{v:.{digits}f}"
        for variant, r in rows.items():
            lat = r.get(f"b{batches[0]}_ms")
            ratio = f"{lat / torch_lat:.2f}x" if torch_lat and lat else "-"
            lines.append("| " + " | ".join([name, variant, fmt(lat)] + [fmt(r.get(f"b{b}_ips")) for b in batches[1:]]
                                           + [fmt(r.get("first_call_s")), ratio]) + " |")
    return "\n".join(lines)


def plot(results, batches, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in results.items():
        lat = rows.get("ms fused", {}).get(f"b{batches[0]}_ms")
        if name in PUBLISHED_TOP1 and lat:
            ax.scatter(lat, PUBLISHED_TOP1[name])
            ax.annotate(name, (lat, PUBLISHED_TOP1[name]), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.set(xlabel=f"fused MindSpore latency, batch {batches[0]} (ms, this CPU)", ylabel="published ImageNet top-1 (%)",
           title="SLAB models: accuracy vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_variant(name, variant, batches, repeats, threads):
    """One (model, variant) measurement; runs in its own process (see main)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    size = 224
    if variant == "torch":
        import torch
        from _reference import load_torch_ref
        torch_ref = load_torch_ref()
        torch.set_num_threads(threads)
        return measure(torch_forward(torch_ref.create_model(name)), batches, repeats, size)
    net = softmax_variant(name) if variant == "ms fused SSSS" else slab_ms.create_model(name)
    if variant != "ms":
        slab_ms.reparameterize(net)
    if variant in ("ms fused MindIR", "lite fused"):
        import shutil
        import tempfile
        net.set_train(False)
        tmp = tempfile.mkdtemp(prefix="bench-mindir-")
        try:
            if variant == "lite fused":
                return lite_measure(net, batches, repeats, size, threads, tmp)
            return measure(mindir_forward(net, size, tmp), batches, repeats, size)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)   # the folder made above
    return measure(ms_forward(net), batches, repeats, size)


def run_train(name, batch, repeats, threads, framework):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
        return torch_train_step(name, batch, 224, repeats)
    return ms_train_step(name, batch, 224, repeats)


def in_subprocess(args, *job):
    """Run one job in a fresh interpreter (MindSpore keeps its memory pool for the life of a
    process; a batch-32 graph next to others runs out of memory). None when the job died."""
    import subprocess
    cmd = [sys.executable, os.path.abspath(__file__), "--job", json.dumps(job), "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return None
    return json.loads(lines[-1])


def measure_in_parts(args, name, variant, batches):
    """Each batch size in its own process, so one out-of-memory batch does not lose the others."""
    row = {}
    for b in batches:
        got = in_subprocess(args, "infer", name, variant, [b], args.repeats)
        if got is None:
            row[f"b{b}_ms"] = row[f"b{b}_ips"] = None
        else:
            row.update(got if b == batches[0] else {k: v for k, v in got.items() if k != "first_call_s"})
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="slab_swin_tiny,slab_swin_small,slab_swin_base,swin_tiny_prepbn",
                   help="comma-separated registered names, or 'all'")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--variants", help="comma-separated rows to measure (default: all), e.g. "
                                      "'ms fused MindIR,lite fused,torch'")
    p.add_argument("--no-train", action="store_true", help="skip the training-step line")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        job = json.loads(args.job)
        if job[0] == "infer":
            print(json.dumps(run_variant(job[1], job[2], job[3], job[4], args.threads)))
        else:
            print(json.dumps(run_train(job[1], job[2], job[3], args.threads, job[4])))
        return
    batches = [int(b) for b in args.batches.split(",")]
    if args.models == "all":
        args.models = ",".join(slab_ms.list_models())
    results = {}
    for name in args.models.split(","):
        variants = ["ms", "ms fused"] + (["ms fused SSSS"] if "slab" in name else []) + ["ms fused MindIR"] + \
            ["lite fused"] + ([] if args.no_torch else ["torch"])
        if args.variants:
            variants = [v for v in variants if v in args.variants.split(",")]
        results[name] = {v: measure_in_parts(args, name, v, batches) for v in variants}
        print(f"{name}: " + json.dumps({k: v.get(f"b{batches[0]}_ms") for k, v in results[name].items()}),
              flush=True)
    first = args.models.split(",")[0]
    reps = max(2, args.repeats // 2)
    train = None
    if not args.no_train:
        train = {"model": first, "batch": args.train_batch,
                 "ms": in_subprocess(args, "train", first, args.train_batch, reps, "ms")}
        if not args.no_torch:
            train["torch"] = in_subprocess(args, "train", first, args.train_batch, reps, "torch")
    import torch
    machine = f"{platform.machine()}, {os.cpu_count()} cores, threads {args.threads}"
    os.makedirs(args.out, exist_ok=True)
    md = [f"# Speed, measured {time.strftime('%Y-%m-%d')} ({machine}; MindSpore {ms.__version__}, "
          f"torch {torch.__version__}; each figure from its own process)", "", table(results, batches)] + \
        (["", train_line(train)] if train else [])
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "batches": batches, "inference": results, "train": train}, f, indent=2)
    plot(results, batches, os.path.join(args.out, "latency_vs_top1.png"))
    print("\n".join(md))


def train_line(train):
    msr, tr = train.get("ms"), train.get("torch")
    text = f"Training step ({train['model']}, batch {train['batch']}, forward + backward + AdamW, median): "
    text += f"MindSpore {msr['step_s']:.2f} s (first call, with compile, {msr['first_call_s']:.1f} s)" if msr \
        else "MindSpore: failed (out of memory?)"
    if tr:
        text += f", PyTorch {tr['step_s']:.2f} s"
        if msr:
            text += f" ({msr['step_s'] / tr['step_s']:.2f}x)"
    return text


if __name__ == "__main__":
    main()
