"""Train a SLAB model (mindcv-style): ``python train.py --config configs/X.yaml [--key value ...]``.

Every key of the YAML file and of the command line must be a known config key
(slab_ms/engine/config.py lists them with their defaults). Data-parallel runs are launched
by ``bash scripts/run_distribute.sh CONFIG [NUM_WORKERS] [--key value ...]``. The output
directory (``ckpt_save_dir``) receives the epoch checkpoints, best.ckpt, final.ckpt,
train.log, history.json, curves.png and summary.json.
"""
import json
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.convert.torch_io import CheckpointError
from slab_ms.engine.config import SCHEMA, ConfigError, load_config, parse_overrides
from slab_ms.engine.trainer import TrainingError, train


def usage():
    lines = [__doc__.strip(), "", "keys (default):"]
    lines += [f"  --{k:28s} {v[2]} ({v[0]!r})" for k, v in SCHEMA.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    try:
        overrides = parse_overrides(argv)
        path = overrides.pop("config", None) or overrides.pop("c", None)
        cfg = load_config(path, overrides)
        summary = train(cfg)
    except (ConfigError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    if summary is not None:   # rank 0 of a data-parallel run, or a single-device run
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
