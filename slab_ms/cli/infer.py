"""Classify images with an exported MindIR: ``python infer.py --model_file X.mindir --images PATH``.

PATH is an image file or a folder (searched recursively). ``--runtime`` picks what runs the
MindIR (``--device`` cpu, gpu or ascend): MindSpore Lite's Python API (``lite``), Lite's C++
runtime through slab_ms/deploy/lite_runner (``lite-cpp``, built by scripts/get_lite.sh; needs a file
written with ``export.py --mindir-compat 2.0``), or MindSpore's own MindIR runtime
(``mindspore``, nn.GraphCell); ``auto`` takes the first that can run the file and says which.
Preprocessing is validate.py's evaluation transform with the values recorded by export.py next
to the model (``X.mindir.json``), or from ``--config``.
Prints the top-5 classes with probabilities per image, then one JSON line: per-file predictions
in ``predictions`` (``--output`` writes the record to a file too), and in ``seconds`` when the
first and the last results came, counted from the start after the imports, and the time spent in
the runtime (``runtime``, its first batch ``runtime_first_batch``; the Lite runner's own Predict).
An image that cannot be decoded is skipped, named on stderr and counted (``bad_images``,
``skipped``), as validate.py does; ``--strict`` stops at it instead. Every error is one line
naming the file it is about.
"""
import argparse
import concurrent.futures
import json
import os
import sys
import time

import numpy as np

from .. import errors
from . import prog, report


def main(argv=None):
    p = argparse.ArgumentParser(prog=prog("infer.py"), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_file", required=True, help="a .mindir from export.py")
    p.add_argument("--images", required=True, help="an image or a folder of images")
    p.add_argument("--config", help="training config for the preprocessing and class names")
    p.add_argument("--device", choices=["cpu", "gpu", "ascend"], default="cpu")
    p.add_argument("--runtime", choices=["auto", "lite", "lite-cpp", "mindspore"], default="auto",
                   help="lite: the mindspore_lite Python package; lite-cpp: the C++ runner of "
                        "slab_ms/deploy/lite_runner (scripts/get_lite.sh); mindspore: nn.GraphCell; auto: the first "
                        "that can run the file")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, help="Lite C++ runner threads (default: the CPU count, at most 8); "
                   "for small images on few cores, leave one core to the decoding")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--quiet", action="store_true", help="only the JSON line, no line per image")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be decoded (default: skip and count it)")
    p.add_argument("--output", help="also write the JSON record (per-file predictions included) to this file")
    args = p.parse_args(argv)
    from ..deploy import check_model_file, classify, list_images, load_meta, make_runner
    from ..io import write_json
    if args.batch_size < 1 or args.top < 1 or (args.threads is not None and args.threads < 1):
        return report(errors.ConfigError("--batch_size, --top and --threads must be at least 1"))   # a flag: 2
    runner, pool, started, first, last = None, None, time.perf_counter(), None, None
    try:
        check_model_file(args.model_file)
        meta = load_meta(args.model_file, args.config)
        paths = list_images(args.images)
        runner, why = make_runner(args.model_file, args.device, args.runtime, meta, args.threads, own_cores=True)
        print(f"runtime: {runner.name} ({args.device})" + (f"; {why}" if why else ""), flush=True)
        results, skipped = [], []
        strict = args.strict or os.path.isfile(args.images)   # one image: its failure is the error
        if args.device == "cpu" and not hasattr(runner, "submit"):   # decode the next batch while one runs
            pool = concurrent.futures.ThreadPoolExecutor(1)
        for r in classify(runner, paths, meta, args.batch_size, args.top, strict, pool):
            if "error" in r:
                skipped.append(r)
                print(f"warning: {r['image']}: {r['error']}; skipped", file=sys.stderr)
                continue
            results.append(r)
            last = time.perf_counter() - started
            first = last if first is None else first
            if not args.quiet:
                print(f"{r['image']}: " + ", ".join(f"{lab} {100 * pr:.1f}%" for lab, pr in r["top"]))
        if not results:   # nothing to report: an error naming (the first) file
            first = f"{skipped[0]['image']}: {skipped[0]['error']}"
            raise errors.ConfigError(first if len(skipped) == 1 else
                                     f"none of the {len(skipped)} images could be decoded, e.g. {first}")
    except (errors.SlabError, RuntimeError, ValueError, OSError) as e:
        report(e)
        return 1
    finally:
        if pool is not None:
            pool.shutdown()
        if hasattr(runner, "close"):
            runner.close()
    summary = {"runtime": runner.name, "device": args.device, "images": len(results), "bad_images": len(skipped)}
    classes = meta.get("classes")
    folders = [os.path.basename(os.path.dirname(r["image"])) for r in results]
    if classes and all(f in classes for f in folders):   # images sorted into class folders: score them
        summary["folder_top1"] = float(np.mean([r["top"][0][0] == f for r, f in zip(results, folders)]))
    summary.update(top1=[r["top"][0][0] for r in results], top1_prob=[r["top"][0][1] for r in results],
                   predictions=results, skipped=skipped,
                   seconds={"first_result": round(first, 4), "last_result": round(last, 4),
                            "runtime": round(sum(runner.times), 4), "runtime_first_batch": round(runner.times[0], 4)})
    if args.output:
        try:
            write_json(args.output, summary)
        except OSError as e:
            report(errors.ConfigError(f"--output {args.output}: cannot write it ({e.strerror or e})"))
            return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
