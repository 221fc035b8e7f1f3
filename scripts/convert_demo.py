"""Converter demo (needs requirements-test.txt for torch): a PyTorch slab_swin_tiny checkpoint in the
official layout -> MindSpore (GRAPH_MODE, --verify) -> PyTorch, checked bit for bit.

No network here: the PyTorch checkpoint comes from the repository's PyTorch reference,
standing in for an official release file of the same layout. Like any trained checkpoint it
is in the state training leaves: PRepBN schedule finished (lam = 0) and BN statistics
recalibrated on data with the weights frozen (SPEC section 2). An untrained network evaluated
with statistics that do not belong to it is ill-conditioned: measured on 2026-11-21, PyTorch
float32 and float64 then differ by 7% in the logits, so no port could be checked against it.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run(args):
    print("$ python " + " ".join(args), flush=True)
    proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True)
    out = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" not in line)
    print(out, flush=True)
    if proc.returncode:
        sys.exit(f"convert demo failed: {' '.join(args)} exited {proc.returncode}")
    return out


def finish_schedule_and_recalibrate(model, batches=4, seed=0):
    """End every PRepBN schedule (iter = 0) and re-estimate BN statistics as a cumulative
    average over a few training-mode forwards, weights untouched."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith(".iter"):
            buf.zero_()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, 3, 224, 224, generator=gen))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = 0.1
    model.eval()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="output/convert_demo")
    p.add_argument("--model", default="slab_swin_tiny")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import torch
    from slab_ms.convert import torch_ref

    src = os.path.join(args.out, f"{args.model}_torch.pth")
    ckpt = os.path.join(args.out, f"{args.model}.ckpt")
    back = os.path.join(args.out, f"{args.model}_back.pth")
    torch.manual_seed(0)
    ref = torch_ref.create_model(args.model)
    finish_schedule_and_recalibrate(ref)
    torch.save({"model": ref.state_dict(), "epoch": 0}, src)
    t0 = time.time()
    out = run(["convert.py", "--from", "torch", "--model", args.model, "--input", src, "--output", ckpt,
               "--verify", "--force"])
    t1 = time.time()
    run(["convert.py", "--from", "mindspore", "--model", args.model, "--input", ckpt, "--output", back, "--force"])
    t2 = time.time()
    a = torch.load(src, weights_only=True)["model"]
    b = torch.load(back, weights_only=True)["model"]
    bit_exact = list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    rel = float(re.search(r"relative = ([0-9.e+-]+)", out).group(1))
    summary = dict(model=args.model, parameters=sum(v.numel() for k, v in a.items() if v.is_floating_point()
                                                    and not k.endswith(("attn_mask", "running_mean", "running_var"))),
                   mindspore_ckpt=ckpt, verify_relative_diff=rel, verify_ok=rel <= 1e-5,
                   round_trip_bit_exact=bit_exact, to_mindspore_with_verify_s=round(t1 - t0, 1),
                   to_torch_s=round(t2 - t1, 1))
    print(json.dumps(summary))
    return 0 if (bit_exact and rel <= 1e-5) else 1


if __name__ == "__main__":
    sys.exit(main())
