"""Evaluate a checkpoint on the validation split: ``python validate.py --config configs/X.yaml --ckpt_path Y.ckpt``.

Accepts a model checkpoint or a training checkpoint (``--use_ema`` evaluates its EMA weights);
``--reparam`` folds every RepBN/PRepBN into the linear layers first (the deployed model).
A language model (``configs/*llama*.yaml``) reports the perplexity of the text split instead
of top-1/top-5.
Any config key may be overridden (``--data_dir``, ``--batch_size``, ...). Preprocessing is the
evaluation transform of train.py (resize to image_resize / crop_pct, centre crop, normalise).
Image files that cannot be decoded are skipped and counted, never replaced by another image.
Prints one JSON line with top1 and top5 as fractions of the images evaluated.
"""
import json
import sys

from .. import errors
from . import check_model, classes_hint, prog, report


def _extra(p):
    p.add_argument("--use_ema", "--use-ema", dest="use_ema", nargs="?", const="true", default="false",
                   metavar="{true,false}", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--split", help="sub-folder to evaluate (default: val_split); text: train or val")
    p.add_argument("--reparam", nargs="?", const="true", default="false", metavar="{true,false}",
                   help="fold RepBN/PRepBN into the neighbouring linear layers before evaluating")
    p.add_argument("--list-configs", dest="list_configs", action="store_true",
                   help="list the configs that ship with slab_ms (give one to --config by name) and exit")


def main(argv=None):
    from ..engine.config import build_parser, describe_configs, load_config, note_defaults, parse_args, parse_bool
    try:
        got = parse_args(build_parser(prog=prog("validate.py"), description=__doc__, extra=_extra),
                         sys.argv[1:] if argv is None else argv)
        if got.pop("list_configs", False):
            print("\n".join(describe_configs()))
            return 0
        use_ema = parse_bool("use_ema", got.pop("use_ema"))
        split = got.pop("split", None)
        reparam = parse_bool("reparam", got.pop("reparam"))
        cfg = load_config(got.pop("config", None), got)
        if not cfg.ckpt_path:
            raise errors.ConfigError("--ckpt_path is required")
        check_model(cfg.model)
        from ..engine.task import validate_checkpoint
        try:
            result = validate_checkpoint(cfg, split=split, use_ema=use_ema, reparam=reparam)
        except errors.ConfigError as e:   # an error about a key nobody set says it is a default
            raise errors.ConfigError(note_defaults(cfg, str(e))) from None
        except errors.CheckpointError as e:   # another classifier size: say which --num_classes fits
            raise errors.CheckpointError(str(e) + classes_hint(str(e), cfg.ckpt_path, "--num_classes {n}")) from None
    except errors.SlabError as e:
        return report(e)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
