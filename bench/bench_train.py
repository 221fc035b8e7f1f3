"""Cost of one training step: our models against MindSpore's own twin (mindcv) and the PyTorch reference.

    python bench/bench_train.py [--models slab_swin_tiny,slab_deit_tiny] [--batch 8] [--rounds 2]
                                [--repeats 3] [--threads N] [--set name:key=value ...] [--out bench/results]

For each model, three main rows: ``ours`` (slab_ms in GRAPH_MODE), ``mindcv`` (mindcv's model of
the same size: ``swin_tiny`` for the Swin family, a ViT of DeiT's size for DeiT) and ``torch``
(our PyTorch reference, ``slab_ms.convert.torch_ref``), and two rows of ours as it was before two changes
(below). One step is forward, backward, gradient clipping and AdamW
on a random (batch, 3, 224, 224) batch; the MindSpore rows use the same training-step cells
(``slab_ms.engine.train_step.Stepper``), so the difference is the model. Every figure comes from
its own fresh process (MindSpore keeps its memory pool for the life of a process): the first
call (compile + one step), the median of ``--repeats`` further steps, and the process's peak
resident set size. The rows are interleaved round by round and each figure is the median over
rounds; the ratios against mindcv come from the same run.

``--set`` adds an ablation row of ours, e.g. ``--set slab_swin_tiny:norm=layernorm``. The row
``unshared`` (``--rows ours,unshared,mindcv``) is ours with ``SLAB_MS_SHARED_GRAPHS=0``: every
cell compiled on its own, as before ``shared_graph`` (``slab_ms.layers.common``). The row
``inforward`` is ours with the PRepBN counters moved inside the forward, as upstream does and as
before ``engine.schedule.StepSchedule`` (``Stepper(schedule="forward")``).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from timing import timed  # same directory: the benchmarks' one timing rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# mindcv's model of the same size as ours: (constructor path, kwargs).
TWINS = {
    "slab_swin_tiny": ("swin_tiny", {}),    # mindcv fixes drop_path_rate 0.2, as slab_swin_tiny's
    "swin_tiny_prepbn": ("swin_tiny", {}),
    "slab_deit_tiny": ("vit", dict(image_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                                   drop_path_rate=0.1)),
}


def _batch(batch, size=224):
    import numpy as np
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    y = np.arange(batch) % 10
    return x, y


def ms_job(kind, name, overrides, batch, repeats, threads):
    import slab_ms  # oneDNN ISA before MindSpore loads
    import mindspore as ms
    from mindspore import nn
    from slab_ms.engine.train_step import NetWithLoss, Stepper, make_loss_scaler
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    if kind in ("ours", "unshared", "inforward"):
        net = slab_ms.create_model(name, **overrides)
    else:
        import mindcv
        twin, kw = TWINS[name]
        if twin == "vit":
            from mindcv.models.vit import VisionTransformer
            net = VisionTransformer(**kw)
        else:
            net = mindcv.create_model(twin, **kw)
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-4, weight_decay=0.05)
    stepper = Stepper(NetWithLoss(net, nn.CrossEntropyLoss()), opt, loss_scale=make_loss_scaler(1.0),
                      clip_value=5.0, network=net, schedule="forward" if kind == "inforward" else "step")
    x, y = _batch(batch)
    x, y = ms.Tensor(x), ms.Tensor(y.astype("int32"))
    return timed(lambda: stepper.step(x, y), repeats, warmup=0)


def torch_job(name, overrides, batch, repeats, threads):
    import torch
    from _reference import check_no_mindspore, load_torch_ref
    torch_ref = load_torch_ref()   # without slab_ms: MindSpore's libraries must not count in this process
    torch.set_num_threads(threads)
    model = torch_ref.create_model(name, **overrides)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x, y = _batch(batch)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    got = timed(step, repeats, warmup=0)
    check_no_mindspore()
    return got


def run_job(job, threads):
    kind, name, overrides, batch, repeats = job
    if kind == "torch":
        first, step = torch_job(name, overrides, batch, repeats, threads)
    else:
        first, step = ms_job(kind, name, overrides, batch, repeats, threads)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
    return {"first_call_s": first, "step_s": step, "peak_rss_gb": rss_gb}


def in_subprocess(job, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--job", json.dumps(job), "--threads", str(threads)]
    env = dict(os.environ, SLAB_MS_SHARED_GRAPHS="0" if job[0] == "unshared" else "1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.stderr.write(f"job {job} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}\n")
        return None
    return json.loads(lines[-1])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows, batch):
    lines = ["| model | row | step s | first call s | peak RSS GB | step vs mindcv | first call vs mindcv | "
             "RSS vs mindcv |", "|---|---|---|---|---|---|---|---|"]
    for (name, label), r in rows.items():
        base = rows.get((name, "mindcv"))
        ratios = []
        for key in ("step_s", "first_call_s", "peak_rss_gb"):
            ok = base and base.get(key) and r.get(key) is not None
            ratios.append(f"{r[key] / base[key]:.2f}x" if ok else "-")
        lines.append(f"| {name} | {label} | {_fmt(r.get('step_s'), '.2f')} | {_fmt(r.get('first_call_s'), '.1f')} | "
                     f"{_fmt(r.get('peak_rss_gb'), '.2f')} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="slab_swin_tiny,slab_deit_tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rows", default="ours,inforward,unshared,mindcv,torch", help="which rows to measure")
    p.add_argument("--set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                   help="an extra row of ours with a model override (ablation), repeatable")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--name", default="train", help="file stem of the results (train.md, train.json)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        print(json.dumps(run_job(json.loads(args.job), args.threads)))
        return
    import yaml
    wanted = args.rows.split(",")
    unknown = sorted(set(wanted) - {"ours", "unshared", "inforward", "mindcv", "torch"})
    if unknown:
        p.error(f"unknown --rows {', '.join(unknown)}; choose from ours, unshared, inforward, mindcv, torch")
    jobs = []   # (model, label, job)
    for name in args.models.split(","):
        for label in wanted:
            if label == "mindcv" and name not in TWINS:
                continue
            jobs.append((name, label, [label, name, {}, args.batch, args.repeats]))
    for spec in args.set:
        name, _, kv = spec.partition(":")
        key, _, value = kv.partition("=")
        jobs.append((name, f"ours {kv}", ["ours", name, {key: yaml.safe_load(value)}, args.batch, args.repeats]))
    measured = {(n, lbl): [] for n, lbl, _ in jobs}
    for rnd in range(args.rounds):
        for name, label, job in jobs:
            got = in_subprocess(job, args.threads)
            measured[(name, label)].append(got)
            print(f"round {rnd + 1} {name} {label}: {got}", flush=True)
    rows = {k: {key: _median([g[key] if g else None for g in v]) for key in ("step_s", "first_call_s", "peak_rss_gb")}
            for k, v in measured.items()}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads"
    text = (f"# Training step cost, batch {args.batch}, 224x224 ({time.strftime('%Y-%m-%d')}, {machine})\n\n"
            f"Medians over {args.rounds} interleaved rounds, each figure its own process; "
            f"`python bench/bench_train.py {' '.join(sys.argv[1:])}`.\n\n" + table(rows, args.batch) + "\n")
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump({"batch": args.batch, "machine": machine, "rounds": {f"{n} | {lbl}": v for (n, lbl), v in
                                                                       measured.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
