"""The one place that tells an image run from a text run: ``train`` and ``validate_checkpoint``
(what train.py and validate.py call) and the launch check of the scripts
(``python -m slab_ms.engine.task CONFIG --check-data --get KEY``)."""
import sys

from ..errors import ConfigError
from ..models.registry import is_model, list_models, unknown_model_error
from .config import _unknown, build_parser, load_config, parse_args, run_splits
from .data import check_image_folder
from .lm_trainer import LMRun, lm_config, load_text, validate_lm_checkpoint
from .trainer import Run, validate_image_checkpoint


def is_language_config(cfg):
    """True when ``cfg`` trains a language model on text. The task follows the model; ``dataset``
    must agree with it (``auto`` always does)."""
    language = cfg.model in list_models("language")
    if cfg.dataset == "auto":
        return language
    if language != (cfg.dataset == "text"):
        raise ConfigError(f"dataset {cfg.dataset!r} does not fit {cfg.model!r}, a "
                          f"{'language' if language else 'vision'} model (use dataset: "
                          f"{'text' if language else 'imagenet'}, or auto)")
    return language


def train(cfg):
    """Run the configured training; returns the summary dict (also written to summary.json) on
    rank 0, None on the other ranks."""
    return (LMRun if is_language_config(cfg) else Run)(cfg).fit()


def validate_checkpoint(cfg, split=None, use_ema=False, reparam=False):
    """What validate.py reports for ``cfg.ckpt_path``: top-1/top-5 of an image model on ``split``
    (default val_split), or a language model's perplexity (default split: val)."""
    if is_language_config(cfg):
        return validate_lm_checkpoint(cfg, split or "val", use_ema, reparam)
    return validate_image_checkpoint(cfg, split, use_ema, reparam)


def check_data(cfg):
    """What the launch scripts check before starting workers: the splits' folders and class count of
    an image run (not the image contents); a text run's corpus, tokenised once here so that the
    workers find the cache. An unknown model name is refused first."""
    if not is_model(cfg.model):
        raise unknown_model_error(cfg.model)
    if is_language_config(cfg):
        load_text(cfg, lm_config(cfg), log=lambda m: print(m, file=sys.stderr))
    else:
        for split in run_splits(cfg):
            check_image_folder(cfg.data_dir, split, cfg.num_classes, -1)


def main(argv=None):
    """``python -m slab_ms.engine.task CONFIG [--get KEY ...] [--check-data] [overrides]``: what the launch
    scripts ask before starting workers (a value; whether the data tree fits the config; for a
    language model, the tokenised corpus, built once here)."""
    def extra(p):
        p.add_argument("config_file", metavar="CONFIG")
        p.add_argument("--get", metavar="KEY", action="append",
                       help="print this key's value (repeatable: one line each, in order)")
        p.add_argument("--check-data", dest="check_data", action="store_true",
                       help="check the splits' folders and class count (not the image contents)")
    got = parse_args(build_parser(prog="python -m slab_ms.engine.task", description=main.__doc__,
                                  extra=extra), argv)
    path, keys, check = got.pop("config_file"), got.pop("get", None) or [], got.pop("check_data", False)
    got.pop("config", None)
    cfg = load_config(path, got)
    if check:
        check_data(cfg)
    for key in keys:
        if key not in cfg:
            raise _unknown(key, "--get")
        print(cfg[key])


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
