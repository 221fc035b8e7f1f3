"""What decoding with Pillow (slab_ms.engine.data.ImageDecoder) costs against MindSpore's own
decode ops, and why the project pays it, measured in one run on one machine.

    python bench/bench_data.py [--images 400] [--size 500x375] [--workers 2] [--repeats 3]

1. Crash check: MindSpore's ``vision.Decode`` and the project's decoder each run in a child
   process on JPEGs damaged in three ways (a Huffman table, header bytes, the middle of the
   entropy-coded data). It prints what each did: decoded, raised, or died (with the signal).
2. Throughput: a synthetic ImageFolder of ImageNet-sized JPEGs (``--size``, quality 90) through
   the training transforms (mindcv's fused RandomCropDecodeResize, against ImageDecoder then
   RandomResizedCrop) and the evaluation transforms (Decode against ImageDecoder, then resize
   and centre crop), with the same map workers. Prints images/s and the ratio, best of
   ``--repeats`` passes after a warm-up pass.
"""
import argparse
import datetime
import io
import os
import platform
import subprocess
import sys
import tempfile
import time

import slab_ms  # noqa: F401  (oneDNN ISA before MindSpore loads)
import numpy as np
from PIL import Image


def synthetic_jpeg(rng, w, h):
    """A smooth colour ramp with noise: compresses like a photograph, not like a flat image."""
    ramp = np.linspace(0, 180, w)[None, :, None] + np.linspace(0, 60, h)[:, None, None]
    x = np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def damaged(jpeg):
    out = {}
    b = bytearray(jpeg)
    i = b.index(b"\xff\xc4")
    b[i + 5:i + 21] = b"\xff" * 16
    out["Huffman table"] = bytes(b)
    b = bytearray(jpeg)
    b[20:600] = np.random.default_rng(1).bytes(580)
    out["header bytes"] = bytes(b)
    n = len(jpeg)
    out["middle of the data"] = jpeg[:n // 3] + np.random.default_rng(2).bytes(n // 3) + jpeg[2 * n // 3:]
    return out


CHILD = """
import numpy as np
import slab_ms
raw = np.fromfile({path!r}, np.uint8)
if {which!r} == "mindspore":
    import mindspore.dataset.vision as vision
    decode = vision.Decode()
else:
    from slab_ms.engine.data import ImageDecoder
    decode = ImageDecoder()
try:
    print("decoded", decode(raw).shape)
except Exception as e:
    print("raised", type(e).__name__)
"""


def crash_check(jpeg, tmp):
    rows = []
    for what, data in damaged(jpeg).items():
        path = os.path.join(tmp, "damaged.jpg")
        with open(path, "wb") as f:
            f.write(data)
        got = []
        for which in ("mindspore", "ImageDecoder"):
            p = subprocess.run([sys.executable, "-c", CHILD.format(path=path, which=which)],
                               capture_output=True, text=True, timeout=300, cwd=tmp)   # Decode drops an
            # abnormal_image.jpg into the working directory when it fails
            lines = p.stdout.strip().splitlines()
            got.append(lines[-1] if p.returncode == 0 and lines else f"died (exit {p.returncode})")
        rows.append((what, *got))
    return rows


def make_folder(root, n, w, h):
    rng = np.random.default_rng(0)
    for i in range(n):
        d = os.path.join(root, "train", f"c{i % 4}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:05d}.jpg"), "wb") as f:
            f.write(synthetic_jpeg(rng, w, h))


def throughput(root, ops, workers, repeats):
    import mindspore.dataset as ds
    best = 0.0
    for r in range(repeats + 1):
        ds.config.set_seed(0)
        d = ds.ImageFolderDataset(os.path.join(root, "train"), shuffle=False, num_parallel_workers=workers)
        d = d.map(ops, input_columns="image", num_parallel_workers=workers, python_multiprocessing=False).batch(32)
        t = time.perf_counter()
        n = sum(x.shape[0] for x, _ in d.create_tuple_iterator(output_numpy=True, num_epochs=1))
        if r:   # the first pass warms the page cache and the thread pools
            best = max(best, n / (time.perf_counter() - t))
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--size", default="500x375", help="WxH of the synthetic JPEGs (ImageNet's median is 500x375)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    import mindspore.dataset.vision as vision
    from mindspore.dataset.vision import Inter
    from slab_ms.engine.data import ImageDecoder

    print(f"# bench_data: {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {args.workers} map workers")
    with tempfile.TemporaryDirectory() as tmp:
        jpeg = synthetic_jpeg(np.random.default_rng(0), w, h)
        print("\n| damaged JPEG | MindSpore Decode | ImageDecoder (Pillow) |\n|---|---|---|")
        for row in crash_check(jpeg, tmp):
            print("| " + " | ".join(row) + " |")

        make_folder(tmp, args.images, w, h)
        tail = [vision.RandomHorizontalFlip(), vision.Normalize([123.7, 116.3, 103.5], [58.4, 57.1, 57.4]),
                vision.HWC2CHW()]
        crop = dict(size=224, scale=(0.08, 1.0), ratio=(0.75, 1.333), interpolation=Inter.BICUBIC)
        evals = [vision.Resize(248, Inter.BICUBIC), vision.CenterCrop(224)] + tail[1:]
        pairs = {
            "train": ([vision.RandomCropDecodeResize(**crop)] + tail,
                      [ImageDecoder(), vision.RandomResizedCrop(**crop)] + tail),
            "eval": ([vision.Decode()] + evals, [ImageDecoder()] + evals),
        }
        print(f"\n{args.images} JPEGs of {w}x{h}, batch 32, best of {args.repeats}:\n")
        print("| transforms | MindSpore decode (img/s) | ImageDecoder (img/s) | ImageDecoder / MindSpore |\n"
              "|---|---|---|---|")
        for name, (native, pillow) in pairs.items():
            a = throughput(tmp, native, args.workers, args.repeats)
            b = throughput(tmp, pillow, args.workers, args.repeats)
            print(f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
