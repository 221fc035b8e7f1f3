"""Build a small real-image ImageFolder dataset from scikit-learn's bundled handwritten digits.

1797 greyscale 8x8 scans of handwritten digits (UCI), 10 classes, shipped inside scikit-learn
(no download). Each is upscaled to SIZE x SIZE RGB PNG and split deterministically: within each
class, every fifth image (by index) goes to val/, the rest to train/.

    python scripts/make_digits.py --out data/digits [--size 32]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image


def build(out, size=32, val_every=5):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    marker = os.path.join(out, "digits.json")
    meta = {"source": "sklearn.datasets.load_digits", "images": int(len(images)), "size": size,
            "val_every": val_every}
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == meta:
                return meta
    if os.path.exists(out) and not os.path.isfile(marker) and (not os.path.isdir(out) or os.listdir(out)):
        raise SystemExit(f"error: {out} exists and is not a digits tree made by this script; choose another --out")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-", dir=parent)   # ours: removed below whatever happens
    try:
        _write(tmp, images, labels, size, val_every, meta)
        if os.path.isdir(out):   # an older digits tree of this script (its marker checked above), or empty
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _write(tmp, images, labels, size, val_every, meta):
    for c in range(10):
        for split in ("train", "val"):
            os.makedirs(os.path.join(tmp, split, str(c)))
    seen = np.zeros(10, int)
    for i, (img, label) in enumerate(zip(images, labels)):
        split = "val" if seen[label] % val_every == 0 else "train"
        seen[label] += 1
        grey = Image.fromarray(np.clip(img * (255.0 / 16.0), 0, 255).astype(np.uint8))
        grey.resize((size, size), Image.BICUBIC).convert("RGB").save(
            os.path.join(tmp, split, str(label), f"{i:04d}.png"))
    with open(os.path.join(tmp, "digits.json"), "w") as f:
        json.dump(meta, f)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/digits")
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    meta = build(args.out, args.size)
    counts = {s: sum(len(os.listdir(c.path)) for c in os.scandir(os.path.join(args.out, s)) if c.is_dir())
              for s in ("train", "val")}   # class folders only: validate.py caches its content check beside them
    print(f"digits: {meta['images']} images at {args.size}x{args.size} in {args.out} "
          f"(train {counts['train']}, val {counts['val']})", file=sys.stderr)


if __name__ == "__main__":
    main()
