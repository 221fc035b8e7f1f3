"""Train a SLAB model (mindcv-style): ``python train.py --config configs/X.yaml [--key value ...]``.

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
from . import report


def main(argv=None):
    from ..engine.config import build_parser, load_config, parse_args
    try:
        parser = build_parser(prog="train.py", description=__doc__)
        got = parse_args(parser, sys.argv[1:] if argv is None else argv)
        cfg = load_config(got.pop("config", None), got)
        from ..engine.task import train
        summary = train(cfg)
    except errors.SlabError as e:
        return report(e)
    if summary is not None:   # rank 0 of a data-parallel run, or a single-device run
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
