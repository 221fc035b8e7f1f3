"""Generation speed of the PRepBN LLaMA at batch 1: MindSpore (RMSNorm twin, PRepBN unfused,
PRepBN fused) against the PyTorch reference (slab_ms/convert/torch_ref/llama.py), one run on one machine.

    python bench/bench_lm.py [--model slab_llama_350m] [--prefill 128,512] [--new-tokens 64]
                             [--repeats 3] [--threads N] [--out bench/results]

Per row: prefill latency (ms, median of ``--repeats``) at each prompt length, through the KV-cache
prefill graph for MindSpore and a forward that fills the cache for PyTorch; decode tokens/s with the
cache (``--new-tokens`` greedy tokens after a 128-token prompt, the first one-token step excluded);
MindSpore's first-call compile time (first call minus a warm call, for the 128-token prefill graph and
the one-token graph); peak resident memory of the process. Weights are random (speed does not depend
on them). Every row runs in its own process with the same thread count. Writes ``lm.md``,
``lm.json`` and ``lm.png`` to ``--out``.
"""
import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from timing import timed  # same directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS = [("ms", "rmsnorm"), ("ms", "prepbn"), ("ms", "prepbn fused"), ("torch", "rmsnorm"), ("torch", "prepbn")]
PROMPT = 128


def run_ms(model, variant, prefills, new_tokens, repeats, threads, profile_tokens=0):
    import slab_ms
    import mindspore as ms
    from slab_ms.lm.generation import (GenerationStats, _bias, _cache_index, _positions, _round_up, generate,
                                       kv_runner, CACHE_ROUND)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(threads)
    t = time.perf_counter()
    net = slab_ms.create_model(model, norm="rmsnorm" if variant == "rmsnorm" else "prepbn")
    if variant == "prepbn fused":
        slab_ms.reparameterize(net)
    net.set_train(False)
    out = {"build_s": time.perf_counter() - t, "prefill_ms": {}}
    cfg = net.config
    rng = np.random.default_rng(0)
    compile_s = 0.0
    for p in prefills:
        cache_len = _round_up(p + new_tokens, CACHE_ROUND)
        runner = kv_runner(net, 1, cache_len)
        ids = rng.integers(3, cfg["vocab_size"], size=(1, p))
        mask = np.ones_like(ids)
        key_mask = np.zeros((1, cache_len), np.int64)
        key_mask[:, :p] = 1
        args = (ms.Tensor(ids.astype(np.int32)), ms.Tensor(_positions(mask).astype(np.int32)),
                ms.Tensor(_bias(key_mask, np.arange(p))),
                ms.Tensor(_cache_index(1, cfg["num_attention_heads"], np.arange(p))))
        first, median = timed(lambda runner=runner, args=args: runner(*args).asnumpy(), repeats, warmup=0)
        out["prefill_ms"][p] = 1000 * median
        if p == PROMPT:
            compile_s += first - median
    prompt = rng.integers(3, cfg["vocab_size"], size=(1, PROMPT))
    warm = GenerationStats()
    generate(net, prompt, max_new_tokens=3, eos_token_id=None, stats=warm)      # compiles the one-token graph
    stats = GenerationStats()
    generate(net, prompt, max_new_tokens=new_tokens, eos_token_id=None, stats=stats)
    step = statistics.median(stats.step_s)
    out["decode_tokens_per_s"] = stats.decode_tokens_per_s
    out["compile_s"] = compile_s + (warm.step_s[0] - step)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if profile_tokens:
        out["profile"] = profile_ms_decode(net, rng, cfg, profile_tokens)
    return out


NORM_SCOPE = re.compile(r"/(input_layernorm|post_attention_layernorm|norm)-")


def profile_ms_ops(run, top=4):
    """MindSpore's profiler over ``run()``: ``{"op_ms", "norm_share", "top_ops"}``, the op time, the
    share of it inside the norm cells (scopes ``input_layernorm``, ``post_attention_layernorm``,
    the final ``norm``; gradient ops keep the scope of the cell they differentiate) and the ``top``
    op types by time (from the profiler's ``cpu_op_detail_info`` tables)."""
    import csv
    import glob
    import shutil
    import tempfile
    from mindspore import Profiler
    where = tempfile.mkdtemp(prefix="bench_lm_profile_")
    try:
        prof = Profiler(output_path=where)
        run()
        prof.stop()
        prof.analyse()
        total, norms, by_type = 0.0, 0.0, {}
        for path in glob.glob(os.path.join(where, "**", "cpu_op_detail_info_*.csv"), recursive=True):
            with open(path) as f:
                for row in csv.DictReader(f):
                    t = float(row["op_total_time(ms)"])
                    total += t
                    by_type[row["op_type"]] = by_type.get(row["op_type"], 0.0) + t
                    if NORM_SCOPE.search(row["full_op_name"]):
                        norms += t
    finally:
        shutil.rmtree(where, ignore_errors=True)
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    return {"op_ms": total, "norm_share": norms / total if total else None,
            "top_ops": [[k, v / total] for k, v in ranked]}


def profile_ms_decode(net, rng, cfg, new_tokens):
    """:func:`profile_ms_ops` over a generation of ``new_tokens`` after an 8-token prompt (the
    prefill is about one decode step of work)."""
    from slab_ms.lm.generation import generate
    prompt = rng.integers(3, cfg["vocab_size"], size=(1, 8))
    generate(net, prompt, max_new_tokens=2, eos_token_id=None)   # compile outside the profile
    return profile_ms_ops(lambda: generate(net, prompt, max_new_tokens=new_tokens, eos_token_id=None))


def profile_torch_decode(net, past, logits, start, new_tokens):
    """Wall time inside the norm modules (forward hooks) over ``new_tokens`` decode steps, as a share of
    the steps' time (PyTorch's CPU ops run synchronously)."""
    import torch
    spent = [0.0]
    marks = {}
    handles = []
    for name, module in net.named_modules():
        if name.endswith(("input_layernorm", "post_attention_layernorm")) or name == "model.norm":
            handles.append(module.register_forward_pre_hook(lambda m, a: marks.__setitem__(id(m), time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, a, o: spent.__setitem__(0, spent[0] + time.perf_counter() - marks[id(m)])))
    t = time.perf_counter()
    for i in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        logits = net(nxt, None, torch.full((1, 1), start + i), past)
    total = time.perf_counter() - t
    for h in handles:
        h.remove()
    return {"norm_share": spent[0] / total}


def run_torch(model, variant, prefills, new_tokens, repeats, threads, profile_tokens=0):
    import torch
    from _reference import load_reference_llama
    ref_llama = load_reference_llama()   # without slab_ms: MindSpore does not load in the PyTorch rows
    torch.set_num_threads(threads)
    t = time.perf_counter()
    net = ref_llama.create_model(model, norm=variant).eval()
    out = {"build_s": time.perf_counter() - t, "prefill_ms": {}, "compile_s": None}
    cfg = net.config
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for p in prefills:
            ids = torch.from_numpy(rng.integers(3, cfg["vocab_size"], size=(1, p)))
            _, median = timed(lambda ids=ids: net(ids, None, None, [[None, None] for _ in net.model.layers]),
                              repeats, warmup=0)
            out["prefill_ms"][p] = 1000 * median
        ids = torch.from_numpy(rng.integers(3, cfg["vocab_size"], size=(1, PROMPT)))
        past = [[None, None] for _ in net.model.layers]
        logits = net(ids, None, None, past)
        steps = []
        for i in range(new_tokens):
            t = time.perf_counter()
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            pos = torch.full((1, 1), PROMPT + i)
            logits = net(nxt, None, pos, past)
            steps.append(time.perf_counter() - t)
        if profile_tokens:
            out["profile"] = profile_torch_decode(net, past, logits, PROMPT + new_tokens, profile_tokens)
    out["decode_tokens_per_s"] = len(steps[1:]) / sum(steps[1:])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def in_subprocess(args, framework, variant):
    job = json.dumps([framework, variant])
    cmd = [sys.executable, os.path.abspath(__file__), "--job", job, "--model", args.model, "--prefill", args.prefill,
           "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--profile-tokens", str(args.profile_tokens)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def write_results(args, results, machine):
    os.makedirs(args.out, exist_ok=True)
    prefills = [int(p) for p in args.prefill.split(",")]
    stamp = time.strftime("%Y-%m-%d")
    rows = []
    for (framework, variant), r in results:
        if "error" in r:
            rows.append(f"| {framework} {variant} | error: {r['error']} |" + " |" * (len(prefills) + 5))
            continue
        pre = " | ".join(f"{r['prefill_ms'][str(p)] if str(p) in r['prefill_ms'] else r['prefill_ms'][p]:.0f}"
                         for p in prefills)
        comp = "-" if r.get("compile_s") is None else f"{r['compile_s']:.1f}"
        share = r.get("profile", {}).get("norm_share")
        share = "-" if share is None else f"{100 * share:.1f}%"
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("profile", {}).get("top_ops", []))
        rows.append(f"| {framework} {variant} | {pre} | {r['decode_tokens_per_s']:.2f} | {comp} | "
                    f"{r['peak_rss_mb']:.0f} | {share} | {top or '-'} |")
    by = {f"{f} {v}": r for (f, v), r in results if "error" not in r}
    ratios = []

    def ratio(a, b):
        if a in by and b in by:
            ratios.append(f"- decode {a} / {b}: {by[a]['decode_tokens_per_s'] / by[b]['decode_tokens_per_s']:.2f}x")
    ratio("ms prepbn fused", "torch prepbn")
    ratio("ms prepbn", "torch prepbn")
    ratio("ms rmsnorm", "torch rmsnorm")
    ratio("ms prepbn fused", "ms rmsnorm")
    ratio("ms prepbn fused", "ms prepbn")
    head = "| row | " + " | ".join(f"prefill {p} (ms)" for p in prefills) + \
        f" | decode tokens/s ({args.new_tokens} new, cache) | compile (s) | peak RSS (MB) | decode time in norms |" \
        " top op types (MindSpore profiler) |"
    text = "\n".join([f"# {args.model} generation speed, batch 1 ({stamp}; {machine})", "", head,
                      "|" + "---|" * (len(prefills) + 6), *rows, "", *ratios, ""])
    with open(os.path.join(args.out, "lm.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "lm.json"), "w") as f:
        json.dump({"date": stamp, "machine": machine, "model": args.model, "new_tokens": args.new_tokens,
                   "rows": [{"framework": fw, "variant": v, **r} for (fw, v), r in results]}, f, indent=2)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        names = list(by)
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        ax[0].bar(names, [by[n]["decode_tokens_per_s"] for n in names], color="tab:blue")
        ax[0].set_title("decode tokens/s (KV cache, batch 1)")
        ax[1].bar(names, [by[n]["prefill_ms"].get(str(prefills[-1]), by[n]["prefill_ms"].get(prefills[-1]))
                          for n in names], color="tab:orange")
        ax[1].set_title(f"prefill {prefills[-1]} tokens (ms)")
        for a in ax:
            a.tick_params(axis="x", rotation=30, labelsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "lm.png"), dpi=110)
    except ImportError:
        pass
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="slab_llama_350m")
    p.add_argument("--prefill", default="128,512", help="prompt lengths for the prefill latency")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rows", default=",".join(f"{f}:{v}" for f, v in ROWS),
                   help="comma-separated framework:variant rows")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--profile-tokens", type=int, default=16,
                   help="decode tokens profiled per row for the share of time in norms (0: no profile)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    prefills = [int(x) for x in args.prefill.split(",")]
    if args.job:
        framework, variant = json.loads(args.job)
        fn = run_ms if framework == "ms" else run_torch
        print(json.dumps(fn(args.model, variant, prefills, args.new_tokens, args.repeats, args.threads,
                            args.profile_tokens)))
        return 0
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads {args.threads}"
    load_start = os.getloadavg()[0]
    results = []
    for row in args.rows.split(","):
        framework, variant = row.split(":")
        r = in_subprocess(args, framework, variant)
        print(f"{framework} {variant}: {r}", flush=True)
        results.append(((framework, variant), r))
    # other processes on the machine move every figure: the 1-minute load average says how much
    machine += f", load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    print(write_results(args, results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
