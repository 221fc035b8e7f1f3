"""What re-parameterization buys at inference: the same weights run unfused (PRepBN in its eval
form, RepBN = BN + alpha * x), fused (``slab_ms.reparameterize``) and, for the paper's
comparison, the same architecture with LayerNorm at every norm, all in one process.

    python bench/bench_fusion.py [--models slab_swin_tiny,...] [--batch 1] [--rounds 30] [--out FILE]

This VM's latency drifts by +-25% between runs and minutes, which swamps a 10% effect when the
variants are timed one after another (as bench_speed.py does, each in its own process). Here
each round runs every variant once, in a rotating order, and the ratio is the median over
rounds of the per-round ratio, so drift cancels. Also printed: the largest difference between
the fused and unfused outputs, and how many norm cells the fold removed.
"""
import argparse
import os
import statistics
import time

import slab_ms  # oneDNN ISA before MindSpore loads
import numpy as np
import mindspore as ms


def count_norms(net):
    """Norm layers as the model sees them: ``slab_ms.remaining_norms`` without the cells inside a
    norm (a PRepBN counts once, not with its LayerNorm, RepBN and BatchNorm)."""
    names = slab_ms.remaining_norms(net)
    return sum(not any(n.startswith(m + ".") for m in names) for n in names)


def build(name):
    """``{variant: net}``: unfused and fused share weights; the LayerNorm one has its own."""
    unfused = slab_ms.create_model(name)
    unfused.set_train(False)
    fused = slab_ms.create_model(name)
    ms.load_param_into_net(fused, {p.name: ms.Parameter(ms.Tensor(p.asnumpy()), name=p.name)
                                   for p in unfused.get_parameters()})
    fused.set_train(False)
    norms_before = count_norms(fused)
    slab_ms.reparameterize(fused)
    layernorm = slab_ms.create_model(name, norm="layernorm")
    layernorm.set_train(False)
    return {"unfused": unfused, "fused": fused, "layernorm": layernorm}, norms_before - count_norms(fused)


def bench(name, batch, rounds, size=224):
    nets, removed = build(name)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32))
    out = {k: net(x).asnumpy() for k, net in nets.items()}   # compile
    for net in nets.values():
        net(x).asnumpy()
    diff = float(np.abs(out["fused"] - out["unfused"]).max() / max(np.abs(out["unfused"]).max(), 1e-12))
    order = list(nets)
    times = {k: [] for k in order}
    for r in range(rounds):
        for k in order[r % len(order):] + order[:r % len(order)]:
            t = time.perf_counter()
            nets[k](x).asnumpy()
            times[k].append(time.perf_counter() - t)

    def paired(a, b):
        return statistics.median(ta / tb for ta, tb in zip(times[a], times[b]))
    return {"model": name, "batch": batch, "rounds": rounds, "norms_folded": removed, "fused_vs_unfused_rel": diff,
            **{f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()},
            "unfused_over_fused": paired("unfused", "fused"), "layernorm_over_fused": paired("layernorm", "fused")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="slab_swin_tiny,swin_tiny_prepbn,slab_deit_tiny,deit_tiny_prepbn,slab_pvt_tiny,"
                   "pvt_tiny_prepbn,slab_cswin_tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    lines = [f"Fusion, measured {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores, threads {args.threads}, "
             f"MindSpore {ms.__version__}; batch {args.batch}, median of {args.rounds} interleaved rounds)", "",
             "| model | norms folded | unfused ms | fused ms | LayerNorm ms | unfused / fused | LayerNorm / fused "
             "| fused vs unfused (rel. max diff) |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        r = bench(name, args.batch, args.rounds)
        lines.append(f"| {name} | {r['norms_folded']} | {r['unfused_ms']:.1f} | {r['fused_ms']:.1f} | "
                     f"{r['layernorm_ms']:.1f} | {r['unfused_over_fused']:.2f}x | {r['layernorm_over_fused']:.2f}x | "
                     f"{r['fused_vs_unfused_rel']:.1e} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
