"""Evaluate a checkpoint on the validation split: ``python validate.py --config configs/X.yaml --ckpt_path Y.ckpt``.

Accepts a model checkpoint or a training checkpoint (``--use_ema`` evaluates its EMA
weights). Any other config key may be overridden (``--data_dir``, ``--batch_size``, ...).
Preprocessing is the evaluation transform of train.py (resize to image_resize / crop_pct,
centre crop, normalise). Prints one JSON line with top1 and top5 as fractions.
"""
import json
import sys

import slab_ms  # noqa: F401  (sets the oneDNN ISA before MindSpore loads)
from slab_ms.checkpoint import load_checkpoint
from slab_ms.convert.torch_io import CheckpointError
from slab_ms.engine import data as data_lib
from slab_ms.engine.config import ConfigError, load_config, parse_overrides
from slab_ms.engine.trainer import build_model, evaluate, setup_context


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    try:
        overrides = parse_overrides(argv)
        path = overrides.pop("config", None) or overrides.pop("c", None)
        use_ema = overrides.pop("use_ema", "false").lower() in ("1", "true", "yes")
        split = overrides.pop("split", None)
        cfg = load_config(path, overrides)
        if not cfg.ckpt_path:
            raise ConfigError("--ckpt_path is required")
        setup_context(cfg)
        split = split or cfg.val_split
        _, decoder = data_lib.check_image_folder(cfg.data_dir, split, cfg.num_classes, cfg.max_bad_images)
        net = build_model(cfg)
        load_checkpoint(net, cfg.ckpt_path, use_ema=use_ema)
        top1, top5, n = evaluate(net, data_lib.eval_loader(cfg, split=split, decoder=decoder))
        for path, why in decoder.new_failures():
            print(f"warning: {path} replaced by another sample: {why}", file=sys.stderr)
        decoder.check_limit(cfg.max_bad_images, split)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(json.dumps({"model": cfg.model, "checkpoint": cfg.ckpt_path, "ema": use_ema, "images": n,
                      "top1": top1, "top5": top5, "bad_images": len(decoder)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
