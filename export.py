"""Export a SLAB model to MindIR (for MindSpore Lite) or ONNX.

The tool lives in slab_ms.cli.export (installed as ``slab-export``); ``python export.py --help`` lists its flags.
"""
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
