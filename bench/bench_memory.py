"""Peak memory of inference: MindSpore unfused and fused against the PyTorch reference.

    python bench/bench_memory.py [--model slab_swin_tiny] [--batches 1,8] [--threads N] [--out FILE]

Each figure is the peak resident set size of its own process (import, build, compile and three
forwards at one batch size), read from ``getrusage``: MindSpore keeps its CPU memory pool for
the life of a process, so only a fresh process per figure says what one job needs.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = ("ms", "ms fused", "torch")


def job(model, variant, batch, threads):
    import numpy as np
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    if variant == "torch":  # without slab_ms, so that MindSpore's libraries do not count here
        import torch
        from _reference import check_no_mindspore, load_torch_ref
        torch_ref = load_torch_ref()
        torch.set_num_threads(threads)
        net = torch_ref.create_model(model).eval()
        with torch.no_grad():
            for _ in range(3):
                net(torch.from_numpy(x))
        check_no_mindspore()
    else:
        import slab_ms  # oneDNN ISA before MindSpore loads
        import mindspore as ms
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.device_context.cpu.op_tuning.threads_num(threads)
        net = slab_ms.create_model(model)
        net.set_train(False)
        if variant == "ms fused":
            slab_ms.reparameterize(net)
        for _ in range(3):
            net(ms.Tensor(x)).asnumpy()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="slab_swin_tiny")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        variant, batch = json.loads(args.job)
        print(json.dumps({"peak_mb": job(args.model, variant, batch, args.threads)}))
        return
    batches = [int(b) for b in args.batches.split(",")]
    lines = [f"Peak RSS (MB) of one process per figure, {args.model}, measured {time.strftime('%Y-%m-%d')} "
             f"({os.cpu_count()} cores, threads {args.threads})", "",
             "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for variant in VARIANTS:
        cells = []
        for b in batches:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--model", args.model, "--threads",
                                str(args.threads), "--job", json.dumps([variant, b])], capture_output=True, text=True)
            got = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            cells.append(f"{json.loads(got[-1])['peak_mb']:.0f}" if r.returncode == 0 and got else "failed")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
