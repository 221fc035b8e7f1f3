"""Train a SLAB model (mindcv-style): ``python train.py --config configs/X.yaml [--key value ...]``.

``--config`` takes a YAML file or the name of a shipped config (``--config slab_swin_t``;
``--list-configs`` lists them). Paths in a config (``data_dir``, ``ckpt_save_dir``, ...) are
relative to the current folder. Nothing is written before the run is accepted: a refused run
(unknown model, missing data, bad key) leaves no output folder.

Every key of the YAML file and of the command line must be a known config key (listed below
with kind, default and choices). Data-parallel runs are launched by
``bash scripts/run_distribute.sh CONFIG [NUM_WORKERS] [--key value ...]``. The output directory
(``ckpt_save_dir``) receives the epoch checkpoints, best.ckpt, final.ckpt, train.log,
history.json, curves.png and summary.json. Fine-tuning: ``--ckpt_path pretrained.ckpt
--num_classes N`` re-initialises a classifier of another shape and loads the rest strictly.
A language model (``configs/slab_llama_350m.yaml``, ``configs/quickstart_lm.yaml``) trains on a
text corpus (``--data_dir``) with a SentencePiece ``--tokenizer``; its checkpoints are numbered by
optimizer step and carry a ``.config.json``.
"""
import json
import sys

from .. import errors
from . import check_model, prog, report


def _extra(p):
    p.add_argument("--list-configs", dest="list_configs", action="store_true",
                   help="list the configs that ship with slab_ms (give one to --config by name) and exit")


def main(argv=None):
    from ..engine.config import build_parser, describe_configs, load_config, note_defaults, parse_args
    name = prog("train.py")
    try:
        parser = build_parser(prog=name, description=__doc__, extra=_extra)
        got = parse_args(parser, sys.argv[1:] if argv is None else argv)
        if got.pop("list_configs", False):
            print("\n".join(describe_configs()))
            return 0
        config = got.pop("config", None)
        if not config and "model" not in got:   # the defaults alone train slab_swin_tiny on ./train
            raise errors.ConfigError(f"no --config and no --model: give --config NAME or FILE ({name} --list-configs "
                                     "lists the shipped configs), or --model with --data_dir and --num_classes")
        cfg = load_config(config, got)
        check_model(cfg.model)   # before the data: the user's own key first
        from ..engine.task import train
        try:
            summary = train(cfg)
        except errors.ConfigError as e:   # an error about a key nobody set says it is a default
            raise errors.ConfigError(note_defaults(cfg, str(e))) from None
    except errors.SlabError as e:
        return report(e)
    if summary is not None:   # rank 0 of a data-parallel run, or a single-device run
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
