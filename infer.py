"""Classify images with an exported MindIR: ``python infer.py --model_file X.mindir --images PATH``.

The tool lives in slab_ms.cli.infer (installed as ``slab-infer``); ``python infer.py --help`` lists its flags.
"""
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
