"""Convert SLAB checkpoints between PyTorch (official code) and MindSpore.

The tool lives in slab_ms.cli.convert (installed as ``slab-convert``); ``python convert.py --help`` lists its flags.
"""
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
