"""Images/s of the whole training input pipeline (slab_ms.engine.data.train_loader) with the
paper's transforms, by map workers, threads against processes, and Pillow against MindSpore's
native decode.

    python bench/bench_pipeline.py [--images 3000] [--samples 2560] [--rounds 3] [--workers 1 2]
                                   [--config configs/slab_swin_t.yaml] [--out bench/results/pipeline.md]

The data: ``--images`` JPEGs of 500x375 (ImageNet's median size; one in four 375x500), quality
90, cut at random from scikit-learn's two bundled photographs (``load_sample_images``: random
crop of 20-100% of the area, resize, flip, slight colour change), in 1000 class folders under a
temporary folder removed at the end. The pipeline: ``--config`` (default the SLAB-Swin-T recipe:
ImageDecoder or RandomCropDecodeResize, RandomResizedCrop to 224 bicubic, flip, RandAugment
rand-m9-mstd0.5-inc1, normalise, random erasing 0.25 'random', mixup 0.8 / cutmix 1.0) with
batch 32 and ``num_samples`` ``--samples``, iterated as the trainer does
(``data.train_batches``).

Each variant runs in a fresh process; rounds interleave the variants (this VM drifts by up to
25% between processes). A run's rate is measured from its third batch to its last (no start-up),
together with the CPU time its process and its worker processes used over that window
(images per CPU-second is the rate per fully used core). Each round also estimates how long the
Python operations hold the GIL per image (:func:`gil_held`), which bounds what threads can feed
on a many-core host. Prints and writes a Markdown table.
"""
import argparse
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
import slab_ms  # noqa (oneDNN ISA before MindSpore loads)
import psutil
from slab_ms.engine import data as data_lib
from slab_ms.engine.config import load_config
cfg = load_config({config!r}, {{"data_dir": {data!r}, "batch_size": "32", "num_samples": "{samples}",
                               "num_parallel_workers": "{workers}", "image_decoder": {decoder!r}}})
me = psutil.Process()
seen = {{}}   # pid -> CPU seconds last seen: a worker that exits before the end still counts

def cpu():
    for p in [me] + me.children(recursive=True):
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return dict(seen)

decoder = data_lib.ImageDecoder()
loader = data_lib.train_loader(cfg, decoder=decoder, python_multiprocessing={processes})
t0 = time.perf_counter()
marks = []
for i, (x, y) in enumerate(data_lib.train_batches(loader)):
    assert tuple(x.shape) == (32, 3, 224, 224) and tuple(y.shape) == (32, cfg.num_classes), (x.shape, y.shape)
    if i == 0:
        first = time.perf_counter() - t0
    elif i == 1:
        start, cpu0 = time.perf_counter(), cpu()
    elif i % 8 == 0:
        cpu()
    n = i + 1
end, cpu1 = time.perf_counter(), cpu()
images, used = (n - 2) * 32, sum(cpu1.values()) - sum(cpu0.get(pid, 0.0) for pid in cpu1)
print(json.dumps({{"rate": images / (end - start), "per_cpu_s": images / used, "cpu": used / (end - start),
                   "first": first, "batches": n, "bad": len(decoder)}}))
"""


GIL = r"""
import glob, sys, threading, time
import slab_ms  # noqa
import numpy as np
from mindcv.data.mixup import Mixup
from slab_ms.engine import data as data_lib
from slab_ms.engine.config import load_config
cfg = load_config({config!r}, {{"data_dir": {data!r}}})
ops = data_lib.train_transforms(cfg)
decode, crop = ops[0], ops[1]
randaug = [o for o in ops if type(o).__name__ == "RandAugment"][0]
raws = [np.fromfile(f, np.uint8) for f in sorted(glob.glob({data!r} + "/train/*/*.JPEG"))[:300]]
crops = [crop(decode(r)) for r in raws]
mix = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.cutmix_prob, switch_prob=0.5,
            num_classes=cfg.num_classes)
batch, labels = np.random.rand(32, 3, 224, 224).astype(np.float32), np.random.randint(0, cfg.num_classes, 32)

def python_ops(k):   # per image: the Python operations of the thread pipeline, and 1/32 of a batch's mixup
    decode(raws[k % len(raws)])
    randaug(crops[k % len(crops)])
    if k % 32 == 0:
        mix(batch, labels)

def seconds_per_image(seconds=3.0):
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        python_ops(k)
        k += 1
    return (time.perf_counter() - t) / k

stop = []
def spin():
    while not stop:
        pass

sys.setswitchinterval(1e-5)   # the two threads take turns at the GIL as often as it is free
alone = seconds_per_image()
other = threading.Thread(target=spin)
other.start()
shared = seconds_per_image()
stop.append(1)
other.join()
print(alone, shared)
"""


def gil_held(config, data):
    """Estimated seconds per image that the thread pipeline's Python operations hold the GIL: their
    time alone (T0 = free + held) against their time while another thread always wants the GIL and
    they take turns (T1 ~ free + 2 held), so held ~ T1 - T0. Threads of one process cannot go
    beyond ~1 / held images/s whatever the cores."""
    p = subprocess.run([sys.executable, "-c", GIL.format(config=config, data=data)], capture_output=True,
                       text=True, timeout=600, cwd=data)
    if p.returncode != 0:
        raise SystemExit(f"GIL estimate failed:\n{p.stderr[-3000:]}")
    alone, shared = map(float, p.stdout.split()[-2:])
    return alone, shared - alone


def make_images(root, n, seed=0):
    """``n`` photographic JPEGs of 500x375 (a quarter portrait) in 1000 class folders."""
    import numpy as np
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    sizes = []
    for k in range(n):
        im = photos[k % len(photos)]
        w, h = (375, 500) if k % 4 == 3 else (500, 375)
        area = rng.uniform(0.2, 1.0) * im.width * im.height
        cw = int(min(im.width, np.sqrt(area * w / h)))
        ch = int(min(im.height, cw * h / w))
        x, y = rng.integers(0, im.width - cw + 1), rng.integers(0, im.height - ch + 1)
        out = im.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        out = ImageEnhance.Color(ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))).enhance(
            rng.uniform(0.8, 1.2))
        folder = os.path.join(root, "train", f"n{k % 1000:08d}")
        os.makedirs(folder, exist_ok=True)
        buf = io.BytesIO()
        out.save(buf, "JPEG", quality=90)
        sizes.append(len(buf.getvalue()))
        with open(os.path.join(folder, f"{k:08d}.JPEG"), "wb") as f:
            f.write(buf.getvalue())
    return sum(sizes) / len(sizes)


def run(config, data, samples, workers, processes, decoder):
    code = CHILD.format(config=config, data=data, samples=samples, workers=workers,
                        processes=processes, decoder=decoder)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=data)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise SystemExit(f"variant failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--samples", type=int, default=2560, help="images per run (num_samples)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "slab_swin_t.yaml"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "pipeline.md"))
    args = p.parse_args()

    variants = [(w, proc, dec) for w in args.workers for dec in ("pillow", "mindspore") for proc in (False, True)]
    tmp = tempfile.mkdtemp(prefix="slab_bench_pipeline_")
    try:
        t = time.perf_counter()
        mean_bytes = make_images(tmp, args.images)
        print(f"# {args.images} JPEGs (mean {mean_bytes / 1024:.0f} KiB) made in {time.perf_counter() - t:.0f} s",
              flush=True)
        results, gil = {v: [] for v in variants}, []
        for r in range(args.rounds):
            for v in variants:
                got = run(args.config, tmp, args.samples, *v)
                results[v].append(got)
                print(f"round {r + 1}: workers {v[0]}, {'processes' if v[1] else 'threads'}, {v[2]}: "
                      f"{got['rate']:.1f} img/s, {got['per_cpu_s']:.1f} img per CPU-s, {got['cpu']:.2f} cores busy, "
                      f"first batch after {got['first']:.1f} s", flush=True)
            gil.append(gil_held(args.config, tmp))
            print(f"round {r + 1}: Python operations {gil[-1][0] * 1e3:.2f} ms per image, GIL held "
                  f"~{gil[-1][1] * 1e3:.2f} ms", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the folder this script made

    load = os.getloadavg()
    lines = ["# Training input pipeline throughput", "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU; "
             f"{os.path.relpath(args.config, ROOT)} with batch 32, {args.samples} images per run from {args.images} "
             f"JPEGs of 500x375 (mean {mean_bytes / 1024:.0f} KiB, quality 90, cut from scikit-learn's sample "
             f"photographs); load average at the end {load[0]:.1f}. `python bench/bench_pipeline.py "
             f"--images {args.images} --samples {args.samples} --rounds {args.rounds}`. Steady state (third batch "
             f"to last); rounds interleave the variants; img/CPU-s counts the CPU time of the process and its "
             f"worker processes.", "",
             "| workers | Python ops in | decode | img/s per round | median img/s | median img per CPU-s |"
             " cores busy |",
             "|---|---|---|---|---|---|---|"]
    for v in variants:
        got = results[v]
        rates = [g["rate"] for g in got]
        lines.append(f"| {v[0]} | {'processes' if v[1] else 'threads'} | {v[2]} | "
                     f"{', '.join(f'{x:.1f}' for x in rates)} | {statistics.median(rates):.1f} | "
                     f"{statistics.median(g['per_cpu_s'] for g in got):.1f} | "
                     f"{statistics.median(g['cpu'] for g in got):.2f} |")
    held = statistics.median(g[1] for g in gil)
    lines += ["", f"Python operations of the thread pipeline (ImageDecoder, RandAugment, 1/32 of a batch's mixup), "
              f"one thread: {', '.join(f'{g[0] * 1e3:.2f}' for g in gil)} ms per image; of which the GIL is held "
              f"~{', '.join(f'{g[1] * 1e3:.2f}' for g in gil)} ms (estimate: `gil_held` in the script), so threads "
              f"of one process top out near {1 / held:.0f} images/s, whatever the number of cores."]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
