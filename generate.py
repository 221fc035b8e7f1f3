"""Generate text with a LLaMA: ``python generate.py --ckpt X.ckpt --tokenizer tokenizer.model --prompt "..."``.

The tool lives in slab_ms.cli.generate (installed as ``slab-generate``); ``python generate.py --help`` lists its flags.
"""
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
