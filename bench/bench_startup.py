"""What the start-up content check (slab_ms.engine.data.check_image_folder) costs on a large
ImageFolder tree: one rank against two, cold against cached, against the directory listing that
any run pays (mindcv's create_dataset / ImageFolderDataset).

    python bench/bench_startup.py [--files 200000] [--classes 1000] [--repeats 3] [--dir /tmp]
                                  [--out bench/results/startup.md]

Builds a synthetic tree of tiny valid PNG and JPEG files (plus one truncated file in 19,997)
under a temporary folder it removes at the end, then times, each in fresh processes started
together and released by the parent at the same moment (so imports are not timed):

- listing: ``image_files`` (one ``os.listdir`` per class folder), mindcv's
  ``create_dataset(...).get_dataset_size()``, and an ImageFolderDataset iterator up to its first row;
- before: ``unreadable_images`` over every file, as every rank did before shares and caching;
- the check of one rank's share (world 1 and world 2, the two ranks as two concurrent
  processes), cold (no cache file) and cached (the second start), and cold with the files'
  pages evicted from the page cache (``posix_fadvise(DONTNEED)`` on each file; inodes stay cached).

Variants are interleaved round by round (this VM drifts between processes). Prints a Markdown
table of seconds per 100k files (the slowest rank for two ranks) and writes it to ``--out``.
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
from slab_ms.engine import data as data_lib
from mindcv.data import create_dataset
import mindspore.dataset as ds
root, what, rank, world = {root_data!r}, {what!r}, {rank}, {world}
path = os.path.join(root, "train")
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
if what == "listdir":
    n = sum(map(len, data_lib.image_files(path, data_lib.class_folders(path)).values()))
elif what == "mindcv":
    n = create_dataset(name="imagenet", root=root, split="train", shuffle=False).get_dataset_size()
elif what == "first_row":
    it = ds.ImageFolderDataset(path, shuffle=False).create_tuple_iterator(output_numpy=True, num_epochs=1)
    next(it)
    n = None
elif what == "before":
    n = len(data_lib.unreadable_images(path, data_lib.class_folders(path)))
else:
    classes, decoder = data_lib.check_image_folder(root, "train", {classes}, 10**9, rank=rank, world=world)
    n = len(decoder)
print(json.dumps({{"seconds": time.perf_counter() - t, "n": n}}), flush=True)
"""


def tiny_images():
    """A few distinct tiny valid PNG and JPEG files (bytes)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for k in range(8):
        im = Image.fromarray(rng.integers(0, 255, (8 + k, 8, 3), np.uint8))
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            im.save(buf, fmt)
            out.append((fmt, buf.getvalue()))
    return out


def build_tree(root, files, classes):
    images = tiny_images()
    per = files // classes
    bad = 0
    for c in range(classes):
        folder = os.path.join(root, "train", f"n{c:08d}")
        os.makedirs(folder)
        for i in range(per):
            fmt, data = images[(c + i) % len(images)]
            k = c * per + i
            if k % 19997 == 1000:   # truncated (each to another length): fails the content check
                data, bad = data[: len(data) // 2 - bad], bad + 1
            with open(os.path.join(folder, f"{k:08d}.{'png' if fmt == 'PNG' else 'JPEG'}"), "wb") as f:
                f.write(data)
    return per * classes, bad


def evict(root):
    """Drop the image files' pages from the page cache (our files only; inodes and dentries stay).
    Pages not yet written back cannot be dropped: ``os.sync`` writes them first."""
    os.sync()
    for dirpath, _, names in os.walk(os.path.join(root, "train")):
        for n in names:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def drop_caches(root):
    """Remove the content-check cache files (the benchmark's own tree, the check's own files)."""
    from slab_ms.engine.data import CONTENT_CHECK_CACHE
    path = os.path.join(root, "train")
    for f in os.listdir(path):
        if f.startswith(CONTENT_CHECK_CACHE):
            os.remove(os.path.join(path, f))


def run(root, what, classes, world=1):
    """Start ``world`` processes, wait until each has imported, release them together; returns
    (wall seconds from release to the last answer, [each process's own seconds], n)."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD.format(root_data=root, what=what, rank=r,
                                                                  world=world, classes=classes)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
             for r in range(world)]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"child failed before starting: {line!r}")
    t = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    got = [json.loads(p.stdout.readline()) for p in procs]
    wall = time.perf_counter() - t
    for p in procs:
        p.wait(timeout=60)
    return wall, [g["seconds"] for g in got], [g["n"] for g in got]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=200000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to make the temporary tree (default: the system's temp dir)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "startup.md"))
    args = p.parse_args()

    parent = args.dir or tempfile.gettempdir()
    free = shutil.disk_usage(parent).free
    need = args.files * 4096 * 2   # a block per tiny file, twice over
    if free < need:
        raise SystemExit(f"{parent} has {free / 2**30:.1f} GiB free, the tree needs about {need / 2**30:.1f} GiB")
    root = tempfile.mkdtemp(prefix="slab_bench_startup_", dir=parent)
    try:
        t = time.perf_counter()
        n, bad = build_tree(root, args.files, args.classes)
        made = time.perf_counter() - t
        print(f"# {n} files in {args.classes} folders ({bad} truncated) made in {made:.0f} s under {root}",
              flush=True)
        # (name, what, world, cold, evicted)
        variants = [("listing: os.listdir per class folder (image_files)", "listdir", 1, False, False),
                    ("listing: mindcv create_dataset().get_dataset_size()", "mindcv", 1, False, False),
                    ("listing: ImageFolderDataset iterator, first row", "first_row", 1, False, False),
                    ("before: every file checked (unreadable_images), 1 process", "before", 1, False, False),
                    ("before: every file checked on each of 2 ranks (2 processes)", "before", 2, False, False),
                    ("check, 1 rank, cold (no cache file)", "check", 1, True, False),
                    ("check, 1 rank, cached", "check", 1, False, False),
                    ("check, 2 ranks (2 processes), cold", "check", 2, True, False),
                    ("check, 2 ranks (2 processes), cached", "check", 2, False, False),
                    ("check, 1 rank, cold, file pages evicted", "check", 1, True, True),
                    ("check, 2 ranks (2 processes), cold, file pages evicted", "check", 2, True, True)]
        results = {v[0]: [] for v in variants}
        counts = {}
        for r in range(args.repeats):
            for name, what, world, cold, evicted in variants:
                if what == "check" and cold:
                    drop_caches(root)
                elif what == "check":   # cached: the cache of this world exists from the cold variant
                    pass
                if evicted:
                    evict(root)
                wall, each, ns = run(root, what, args.classes, world)
                results[name].append(max(each))
                counts[name] = ns
                print(f"round {r + 1}: {name}: {max(each):.2f} s (ranks {', '.join(f'{s:.2f}' for s in each)};"
                      f" wall {wall:.2f} s) n={ns}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)   # the tree this script made

    per = 100000 / n
    load = os.getloadavg()
    lines = ["# Start-up content check: seconds per 100k files",
             "",
             f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}; tree of {n} tiny PNG/JPEG files in {args.classes} class folders "
             f"({bad} truncated) on local disk, made just before (page cache warm unless \"evicted\"); "
             f"load average at the end {load[0]:.1f}. `python bench/bench_startup.py --files {args.files} "
             f"--classes {args.classes} --repeats {args.repeats}`. Two ranks: two processes started together, "
             f"the slower rank's time. Rounds interleave the variants.",
             "",
             "| what | " + " | ".join(f"round {r + 1}" for r in range(args.repeats))
             + " | median (s per 100k files) | bad files found |",
             "|---|" + "---|" * (args.repeats + 2)]
    for name, what, _, _, _ in variants:
        vals = results[name]
        found = "" if what in ("listdir", "mindcv", "first_row") else \
            " + ".join(str(c) for c in counts[name])
        lines.append(f"| {name} | " + " | ".join(f"{v * per:.2f}" for v in vals)
                     + f" | {statistics.median(vals) * per:.2f} | {found} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
