"""Train a SLAB model (mindcv-style): ``python train.py --config configs/X.yaml [--key value ...]``.

The tool lives in slab_ms.cli.train (installed as ``slab-train``); ``python train.py --help`` lists its flags.
"""
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
