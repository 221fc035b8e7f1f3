"""Evaluate a checkpoint on the validation split: ``python validate.py --config configs/X.yaml --ckpt_path Y.ckpt``.

The tool lives in slab_ms.cli.validate (installed as ``slab-validate``); ``python validate.py --help`` lists its flags.
"""
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.cli.validate import main

if __name__ == "__main__":
    sys.exit(main())
