"""LLaMA training throughput (tokens/s): MindSpore against the PyTorch reference, one run on one machine.

    python bench/bench_lm_train.py [--models slab_llama_tiny,slab_llama_350m] [--steps 5] [--rounds 2]
                                   [--threads 2] [--set MODEL:batch=B,seq=T,KEY=VALUE ...]
                                   [--rows ms:prepbn,ms:rmsnorm,torch:prepbn,torch:rmsnorm]
                                   [--profile MODEL] [--profile-steps 3] [--out bench/results]

Four rows per model: MindSpore PRepBN (``slab_ms``, GRAPH_MODE), its RMSNorm twin (``norm='rmsnorm'``),
and the PyTorch reference (``slab_ms/convert/torch_ref/llama.py``) with each norm. One step is one optimizer step
on a random (batch, seq) batch with an all-ones mask: forward, mean next-token cross-entropy,
backward, global-norm gradient clipping at 1.0 and AdamW (lr 3e-4, weight decay 0.1, betas
0.9/0.95, eps 1e-8, every trainable parameter decayed). MindSpore runs the training-step cells of
train.py (``Stepper`` over ``CausalLMLoss`` with ``nn.AdamWeightDecay``); PyTorch runs
``torch.optim.AdamW`` and ``torch.nn.utils.clip_grad_norm_``. PRepBN is mid-schedule in both
(warm 0, ``iter = total_step // 2``: lambda 0.5, both branches computed, as in a real run).

Threads: PyTorch ``torch.set_num_threads(--threads)``; MindSpore
``ms.device_context.cpu.op_tuning.threads_num(--threads)`` (its CPU kernel pool, 25 by default);
both children also get ``OMP_NUM_THREADS=--threads`` (anything OpenMP inside either library).
PyTorch's OpenMP threads spin-wait between ops: on a machine where other processes compete for
the cores its steps can be 10-100x slower (measured 1.6 s instead of 8 ms for a tiny step), while
MindSpore's own pool degrades gently. Measure on a quiet machine; ``OMP_WAIT_POLICY=PASSIVE`` in
the environment (inherited by both children, noted in the results) limits the damage otherwise.

Every row runs in its own fresh process: first call (graph compile + first step for MindSpore,
first step for PyTorch), median of ``--steps`` further steps, tokens/s = batch * seq / step,
and the process's peak resident set size. Rows are interleaved round by round and each figure is
the median over ``--rounds``. Default sizes: ``slab_llama_tiny`` with vocab 1024 at 16 x 128 (the
quickstart model) and ``slab_llama_350m`` at 1 x 256; ``--set`` changes them
(``--set slab_llama_350m:batch=2,seq=512``; keys other than batch/seq are model overrides).

``--profile MODEL`` (first round only, after the timed steps and the RSS reading) runs MindSpore's
profiler over ``--profile-steps`` steps of that model's MindSpore PRepBN row and reports the top
op types by time share and the share inside the norm cells (``bench_lm.profile_ms_ops``); the
PyTorch PRepBN row of the model gets torch.profiler's top ops by self CPU time, for comparison.
Writes ``<out>/<name>.md`` (default ``lm_train.md``).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from timing import cpu_model, timed  # same directory: the benchmarks' one timing rule (imports no framework)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = [("ms", "prepbn"), ("ms", "rmsnorm"), ("torch", "prepbn"), ("torch", "rmsnorm")]
# per model: batch, seq and model overrides
SIZES = {
    "slab_llama_tiny": dict(batch=16, seq=128, overrides=dict(vocab_size=1024)),
    "slab_llama_350m": dict(batch=1, seq=256, overrides={}),
}
LR, WEIGHT_DECAY, BETAS, EPS, CLIP = 3e-4, 0.1, (0.9, 0.95), 1e-8, 1.0


def _batch(vocab, batch, seq):
    import numpy as np
    ids = np.random.default_rng(0).integers(3, vocab, size=(batch, seq))
    return ids, np.ones_like(ids)


# ------------------------------------------------------------------------------------- MindSpore
def ms_job(job):
    import slab_ms  # oneDNN ISA before MindSpore loads
    import mindspore as ms
    from mindspore import Tensor, nn
    from slab_ms.lm.loss import CausalLMLoss
    from slab_ms.engine.schedule import prepbn_cells
    from slab_ms.engine.train_step import Stepper, make_loss_scaler
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(job["threads"])
    net = slab_ms.create_model(job["model"], norm=job["norm"], **job["overrides"])
    lam = None
    for cell in prepbn_cells(net):   # mid-schedule: warm 0, lambda = 0.5
        total = int(cell.total_step.asnumpy())
        cell.set_schedule(total, 0)
        cell.iter.set_data(Tensor(total // 2, ms.int64))
        lam = cell.lam()
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=LR, beta1=BETAS[0], beta2=BETAS[1], eps=EPS,
                             weight_decay=WEIGHT_DECAY)
    stepper = Stepper(CausalLMLoss(net), opt, loss_scale=make_loss_scaler(1.0), clip_value=CLIP, network=net)
    ids, mask = _batch(net.config["vocab_size"], job["batch"], job["seq"])
    x, m = Tensor(ids.astype("int32")), Tensor(mask.astype("int32"))
    losses = []

    def step():
        losses.append(stepper.step(x, m)[0])   # float(loss.asnumpy()): waits for the step
    first, median = timed(step, job["steps"], warmup=0)
    out = _result(first, median, job, lam, losses)
    if job.get("profile"):
        out["profile"] = profile_ms_steps(step, job["profile"])
    return out


def profile_ms_steps(step, steps):
    """bench_lm's :func:`bench_lm.profile_ms_ops` (MindSpore's profiler: op time, share inside the
    norm cells counting forward and backward ops, top op types) over ``steps`` training steps,
    after 2 unprofiled ones."""
    import bench_lm
    for _ in range(2):
        step()
    return bench_lm.profile_ms_ops(lambda: [step() for _ in range(steps)])


# --------------------------------------------------------------------------------------- PyTorch
def torch_job(job):
    import torch
    from torch.nn import functional as F
    from _reference import check_no_mindspore, load_reference_llama
    ref_llama = load_reference_llama()   # without slab_ms: MindSpore must not load in this process
    torch.set_num_threads(job["threads"])
    net = ref_llama.create_model(job["model"], norm=job["norm"], **job["overrides"])
    net.train()
    lam = None
    for m in net.modules():
        if isinstance(m, ref_llama.LinearNorm):   # mid-schedule, as the MindSpore row
            m.warm.fill_(0)
            m.iter.copy_(m.total_step // 2)
            lam = float(m.r0 * m.iter / m.total_step)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    ids, mask = _batch(net.config["vocab_size"], job["batch"], job["seq"])
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    vocab = net.config["vocab_size"]
    losses = []

    def step():
        opt.zero_grad()
        logits = net(x, m)
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), x[:, 1:].reshape(-1), reduction="none")
        weight = m[:, 1:].reshape(-1).float()
        loss = (nll * weight).sum() / weight.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        opt.step()
        losses.append(float(loss))
    first, median = timed(step, job["steps"], warmup=0)
    out = _result(first, median, job, lam, losses)
    if job.get("profile"):
        out["profile"] = profile_torch_steps(step, job["profile"])
    check_no_mindspore()
    return out


def profile_torch_steps(step, steps, top=6):
    """torch.profiler over ``steps`` steps: the op types with the most self CPU time, as shares."""
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {"op_ms": total / 1000, "norm_share": None,
            "top_ops": [[e.key, e.self_cpu_time_total / total] for e in events[:top]]}


def _result(first, median, job, lam, losses):
    return {"first_call_s": first, "step_s": median, "tokens_per_s": job["batch"] * job["seq"] / median,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,   # KiB on Linux
            "lambda": lam, "loss_first": losses[0], "loss_last": losses[-1]}


# ---------------------------------------------------------------------------------------- driver
def in_subprocess(job, timeout=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]))
    cmd = [sys.executable, os.path.abspath(__file__), "--job", json.dumps(job)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"exit {p.returncode}: " + ((p.stderr.strip().splitlines() or ["no output"])[-1])[:300]}
    return json.loads(lines[-1])


def parse_sets(specs):
    """``--set MODEL:batch=B,seq=T,KEY=VALUE`` -> SIZES updated (other keys are model overrides)."""
    import yaml
    sizes = {k: dict(v, overrides=dict(v["overrides"])) for k, v in SIZES.items()}
    for spec in specs:
        name, _, kvs = spec.partition(":")
        entry = sizes.setdefault(name, dict(batch=1, seq=256, overrides={}))
        for kv in filter(None, kvs.split(",")):
            key, _, value = kv.partition("=")
            value = yaml.safe_load(value)
            if key in ("batch", "seq"):
                entry[key] = int(value)
            else:
                entry["overrides"][key] = value
    return sizes


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def machine_line(threads):
    model = cpu_model()
    policy = os.environ.get("OMP_WAIT_POLICY")   # children inherit it; say so when set
    return f"{model}, {os.cpu_count()} cores, {threads} threads" + (f", OMP_WAIT_POLICY={policy}" if policy else "")


def table(models, sizes, rows):
    lines = ["| model | batch x seq | row | first call (s) | step (s) | tokens/s | peak RSS (GB) | "
             "MindSpore / PyTorch step | PRepBN / RMSNorm step |", "|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        s = sizes[name]
        for fw, norm in ROWS:
            r = rows.get((name, fw, norm))
            if r is None:
                continue
            label = f"{'MindSpore' if fw == 'ms' else 'PyTorch'} {'PRepBN' if norm == 'prepbn' else 'RMSNorm'}"
            if r.get("error"):
                lines.append(f"| {name} | {s['batch']} x {s['seq']} | {label} | error: {r['error']} |||||||")
                continue
            vs_torch = vs_rms = "-"
            other = rows.get((name, "torch", norm))
            if fw == "ms" and other and other.get("step_s"):
                vs_torch = f"{r['step_s'] / other['step_s']:.2f}x"
            rms = rows.get((name, fw, "rmsnorm"))
            if norm == "prepbn" and rms and rms.get("step_s"):
                vs_rms = f"{r['step_s'] / rms['step_s']:.2f}x"
            lines.append(f"| {name} | {s['batch']} x {s['seq']} | {label} | {_fmt(r['first_call_s'], '.1f')} | "
                         f"{_fmt(r['step_s'], '.3f')} | {_fmt(r['tokens_per_s'], '.0f')} | "
                         f"{_fmt(r['peak_rss_gb'], '.2f')} | {vs_torch} | {vs_rms} |")
    return "\n".join(lines)


def profile_lines(profiles):
    lines = []
    for (name, fw, norm), p in profiles.items():
        who = "MindSpore profiler" if fw == "ms" else "torch.profiler, self CPU time"
        top = ", ".join(f"{k} {100 * v:.1f}%" for k, v in p.get("top_ops", []))
        share = "" if p.get("norm_share") is None else f"; op time inside the norm cells {100 * p['norm_share']:.1f}%"
        lines.append(f"- {name} {fw} {norm} ({who}, {p['op_ms']:.0f} ms of op time over the profiled steps): "
                     f"{top}{share}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="slab_llama_tiny,slab_llama_350m")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first call")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default=",".join(f"{f}:{n}" for f, n in ROWS), help="framework:norm rows")
    p.add_argument("--set", action="append", default=[], metavar="MODEL:batch=B,seq=T,KEY=VALUE",
                   help="batch, seq and model overrides of a model, repeatable")
    p.add_argument("--profile", default="", help="comma-separated models whose PRepBN rows are profiled")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--timeout", type=float, default=None, help="seconds per row process (default: none)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--name", default="lm_train", help="file stem of the results")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        job = json.loads(args.job)
        print(json.dumps(ms_job(job) if job["framework"] == "ms" else torch_job(job)))
        return 0
    sizes = parse_sets(args.set)
    models = [m for m in args.models.split(",") if m]
    wanted = [tuple(r.split(":")) for r in args.rows.split(",") if r]
    profiled = set(filter(None, args.profile.split(",")))
    jobs = []
    for name in models:
        s = sizes.setdefault(name, dict(batch=1, seq=256, overrides={}))
        for fw, norm in wanted:
            jobs.append(dict(framework=fw, norm=norm, model=name, overrides=s["overrides"], batch=s["batch"],
                             seq=s["seq"], steps=args.steps, threads=args.threads))
    machine = machine_line(args.threads)
    load_start = os.getloadavg()[0]
    measured = {(j["model"], j["framework"], j["norm"]): [] for j in jobs}
    profiles = {}
    for rnd in range(args.rounds):
        for job in jobs:
            key = (job["model"], job["framework"], job["norm"])
            run = dict(job)
            if rnd == 0 and job["model"] in profiled and job["norm"] == "prepbn":
                run["profile"] = args.profile_steps
            got = in_subprocess(run, args.timeout)
            if "profile" in got:
                profiles[key] = got.pop("profile")
            measured[key].append(got)
            print(f"round {rnd + 1} {' '.join(key)}: {json.dumps(got)}", flush=True)
    rows = {}
    for key, runs in measured.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            rows[key] = {"error": runs[-1]["error"]}
            continue
        rows[key] = {k: _median([r[k] for r in ok]) for k in ("first_call_s", "step_s", "peak_rss_gb")}
        rows[key]["tokens_per_s"] = sizes[key[0]]["batch"] * sizes[key[0]]["seq"] / rows[key]["step_s"]
    machine += f", load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    sized = ", ".join(f"{m} {sizes[m]['batch']} x {sizes[m]['seq']}"
                      + (f" ({', '.join(f'{k}={v}' for k, v in sizes[m]['overrides'].items())})"
                         if sizes[m]["overrides"] else "") for m in models)
    text = "\n".join([
        f"# LLaMA training throughput, MindSpore vs PyTorch ({time.strftime('%Y-%m-%d')}; {machine})", "",
        f"One optimizer step (forward, backward, clip 1.0, AdamW) on {sized}; PRepBN mid-schedule (lambda 0.5). "
        f"Medians over {args.rounds} interleaved round(s), each row its own process, step = median of "
        f"{args.steps} steps after the first call; tokens/s = batch x seq / step. "
        f"`python bench/bench_lm_train.py {' '.join(sys.argv[1:] if argv is None else argv)}`.", "",
        table(models, sizes, rows), "", *profile_lines(profiles)]).rstrip() + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
