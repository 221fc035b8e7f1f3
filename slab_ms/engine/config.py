"""Training configuration: mindcv's flat YAML keys plus the few SLAB adds, typed and checked.

``load_config(path, overrides)`` reads a YAML file, applies ``--key value`` overrides and
returns a ``Config`` (attribute access). Every key must be known: a typo in a YAML file or on
the command line is an error naming the closest known key, never a silently ignored setting.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import os
from typing import Any

import yaml

from ..errors import ConfigError


# Names of mindspore.dataset.vision.Inter that mindcv's transforms accept (lower case).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area", "pilcubic", "antialias")

# key: (default, kind, help[, choices]). kind: bool, int, float, str, list, dict, or "int|float" style
# unions; None defaults stay None unless set. Names follow mindcv's config.py where mindcv has the key.
SCHEMA = {
    # system
    "mode": (0, "int", "0: GRAPH_MODE (default), 1: PYNATIVE_MODE", (0, 1)),
    "device_target": ("auto", "str", "device to run on (auto: what MindSpore finds)",
                      ("auto", "CPU", "GPU", "Ascend")),
    "distribute": (False, "bool", "data-parallel run (set by scripts/run_distribute.sh)"),
    "seed": (42, "int", "seed for numpy, random, MindSpore and the data order"),
    "log_interval": (100, "int", "log a line every N optimizer steps"),
    "val_while_train": (True, "bool", "validate after every val_interval epochs"),
    "val_interval": (1, "int", "epochs between validations"),
    "ckpt_path": ("", "str", "initialise the model from this checkpoint (model weights only)"),
    "resume": ("", "str", "resume a run: a training checkpoint, or 'auto' for the newest in ckpt_save_dir"),
    "pretrained": (False, "bool", "mindcv key; SLAB weights are converted with convert.py instead"),
    # data
    "dataset": ("auto", "str", "imagenet: any ImageFolder tree with train/ and val/; text: a corpus for a language "
                               "model; auto: text for a language model, else imagenet", ("auto", "imagenet", "text")),
    "data_dir": ("./", "str", "dataset root holding train_split/ and val_split/; for text, the corpus: a text file "
                              "(documents separated by blank lines), a folder of .txt files or a JSON-lines file"),
    "train_split": ("train", "str", "training sub-folder"),
    "val_split": ("val", "str", "validation sub-folder"),
    "max_bad_images": (100, "int", "image files per split that may fail the start-up content check or the decode "
                                   "(replaced in training, skipped in evaluation, counted and logged); more is an "
                                   "error; -1: no limit and no start-up check"),
    "image_decoder": ("pillow", "str", "pillow: decode in Python with Pillow, checked and counted (max_bad_images); "
                                       "mindspore: mindcv's native decode ops, faster for training but a damaged "
                                       "JPEG can crash the process (bench/bench_data.py); evaluation always decodes "
                                       "with Pillow (same pixels)", ("pillow", "mindspore")),
    "num_parallel_workers": (8, "int", "data pipeline workers per device (at most the CPU count)"),
    "python_multiprocessing": (False, "bool", "run the pipeline's Python operations (Pillow decode, RandAugment) in "
                                              "worker processes instead of threads: threads are faster on few cores "
                                              "but share one interpreter lock (~1500 img/s per process, "
                                              "bench/results/pipeline.md); bad files are still counted"),
    "shuffle": (True, "bool", "shuffle the training data"),
    "num_samples": (None, "int", "use only this many training images (per shard)"),
    "batch_size": (128, "int", "images per device per micro-step"),
    "drop_remainder": (True, "bool", "drop the last incomplete training batch"),
    # text (language models)
    "tokenizer": ("", "str", "text: SentencePiece model file (scripts/train_tokenizer.py makes one); its vocabulary "
                             "must equal the model's"),
    "text_field": ("text", "str", "text: the field of a JSON-lines corpus that holds the text"),
    "seq_length": (512, "int", "text: tokens per training block (at most the model's max_position_embeddings)"),
    "val_fraction": (0.05, "float", "text: every round(1/val_fraction)-th document is validation data"),
    "token_cache_dir": ("", "str", "text: folder of the tokenised corpus cache (default: <data_dir>.slab_tokens "
                                   "beside the data)"),
    "max_steps": (None, "int", "text: stop after this many optimizer steps (default: epoch_size passes over "
                               "the corpus)"),
    "warmup_steps": (None, "int", "linear warm-up in optimizer steps (replaces warmup_epochs when set)"),
    "ckpt_save_steps": (0, "int", "text: also save a training checkpoint every N optimizer steps (0: per epoch "
                                  "only); resume continues from the same step"),
    # augmentation
    "image_resize": (224, "int", "network input size"),
    "scale": ([0.08, 1.0], "list", "random-resized-crop area range"),
    "ratio": ([0.75, 1.333], "list", "random-resized-crop aspect range"),
    "hflip": (0.5, "float", "horizontal flip probability"),
    "vflip": (0.0, "float", "vertical flip probability"),
    "color_jitter": (0.4, "float", "colour jitter strength (None or 0 disables)"),
    "interpolation": ("bicubic", "str", "resize interpolation (mindspore.dataset.vision.Inter)", INTERPOLATIONS),
    "auto_augment": (None, "str", "e.g. randaug-m9-mstd0.5-inc1"),
    "re_prob": (0.0, "float", "random erasing probability"),
    "re_scale": ([0.02, 0.33], "list", "random erasing area range"),
    "re_ratio": ([0.3, 3.3], "list", "random erasing aspect range"),
    "re_value": (0, "int|str", "random erasing fill: 0 or 'random'"),
    "re_max_attempts": (10, "int", "random erasing attempts"),
    "mean": ([0.485 * 255, 0.456 * 255, 0.406 * 255], "list", "normalisation mean (0-255 scale)"),
    "std": ([0.229 * 255, 0.224 * 255, 0.225 * 255], "list", "normalisation std (0-255 scale)"),
    "crop_pct": (0.875, "float", "eval centre-crop fraction"),
    "mixup": (0.0, "float", "mixup alpha"),
    "cutmix": (0.0, "float", "cutmix alpha"),
    "cutmix_prob": (1.0, "float", "probability of applying mixup or cutmix to a batch"),
    # model
    "model": ("slab_swin_tiny", "str", "registered model name (slab_ms.list_models())"),
    "num_classes": (1000, "int", "classes; must equal the class folders of the dataset"),
    "in_channels": (3, "int", "input channels"),
    "drop_rate": (None, "float", "dropout rate (model default when unset)"),
    "drop_path_rate": (None, "float", "stochastic depth rate (model default when unset)"),
    "model_kwargs": ({}, "dict", "other constructor overrides, e.g. {embed_dim: 32, depths: [1, 1]}"),
    "amp_level": ("auto", "str", "mixed precision (auto: O2 on Ascend, O0 elsewhere)",
                  ("auto", "O0", "O1", "O2", "O3")),
    "jit_level": ("auto", "str", "graph compile level (MindSpore JitConfig jit_level): O0 kernel by kernel, O1 with "
                                 "fusions, O2 whole-graph sinking (Ascend); auto: O2 in graph mode on Ascend, "
                                 "MindSpore's default elsewhere", ("auto", "O0", "O1", "O2")),
    "dataset_sink_mode": (None, "bool", "sink the data: sink_size optimizer steps per host call, the loss, finite "
                                        "flags, lr and lambda read back once per sink, the PRepBN counters moved in "
                                        "the graph (unset: on for Ascend, off elsewhere; CPU has no device queue, "
                                        "so there the host launches each step without reading anything back)"),
    "sink_size": (None, "int", "optimizer steps per sink in dataset sink mode (unset: an epoch); sinks also end at "
                               "checkpoint steps"),
    # checkpoints
    "ckpt_save_dir": ("./ckpt", "str", "output directory: checkpoints, logs, summary.json, curves PNG"),
    "ckpt_save_interval": (1, "int", "epochs between checkpoints"),
    "keep_checkpoint_max": (5, "int", "keep the newest N epoch checkpoints (plus best.ckpt)"),
    "epoch_size": (300, "int", "training epochs"),
    "ema": (False, "bool", "keep an exponential moving average of the weights"),
    "ema_decay": (0.9999, "float", "EMA decay per optimizer step"),
    "clip_grad": (True, "bool", "clip the global gradient norm"),
    "clip_value": (5.0, "float", "gradient norm bound"),
    "gradient_accumulation_steps": (1, "int", "micro-steps per optimizer step"),
    # optimizer
    "opt": ("adamw", "str", "mindcv optimizer", ("adamw", "adam", "sgd", "momentum", "nesterov", "lion", "nadam",
                                                 "adan", "rmsprop", "adagrad", "lamb")),
    "momentum": (0.9, "float", "momentum (sgd/momentum) "),
    "beta1": (0.9, "float", "Adam beta1"),
    "beta2": (0.999, "float", "Adam beta2"),
    "eps": (1e-8, "float", "Adam epsilon"),
    "weight_decay": (0.05, "float", "decoupled weight decay (not on biases, norms, alpha, position tables)"),
    "filter_bias_and_bn": (True, "bool", "exclude biases, norms, alpha and position tables from weight decay"),
    "use_nesterov": (False, "bool", "Nesterov momentum"),
    "loss_scale": (1.0, "float", "static loss scale, or the initial dynamic one"),
    "dynamic_loss_scale": (None, "bool", "dynamic loss scaling (default: on when AMP is on)"),
    # schedule
    "scheduler": ("cosine_decay", "str", "cosine: upstream's (timm's cosine over decay_epochs from step 0, the "
                                         "warm-up replacing its start); the others are mindcv's",
                  ("cosine", "cosine_decay", "warmup_cosine_decay", "one_cycle", "cyclic", "exponential_decay",
                   "polynomial_decay", "step_decay", "multi_step_decay", "constant")),
    "lr": (5e-4, "float", "peak learning rate (per lr_base_batch images when that is set)"),
    "lr_base_batch": (512, "int", "scale lr, min_lr by global batch / this (0: no scaling)"),
    "min_lr": (5e-6, "float", "final learning rate of the cosine"),
    "warmup_epochs": (20, "int", "linear warm-up epochs"),
    "warmup_factor": (0.001, "float", "warm-up starts at lr * warmup_factor (5e-7 for lr 5e-4)"),
    "decay_epochs": (None, "int", "cosine length in epochs; min_lr after it (default: epoch_size for cosine, "
                                  "epoch_size - warmup_epochs for mindcv's schedulers, which start after the warm-up)"),
    "decay_rate": (0.9, "float", "step/exponential decay rate"),
    "multi_step_decay_milestones": ([30, 60, 90], "list", "multi_step_decay epochs"),
    "lr_epoch_stair": (False, "bool", "update the lr once per epoch"),
    "num_cycles": (1, "int", "cosine cycles"),
    "cycle_decay": (1.0, "float", "cosine cycle decay"),
    # loss
    "loss": ("CE", "str", "cross-entropy (CE) or binary cross-entropy (BCE)", ("CE", "BCE")),
    "label_smoothing": (0.1, "float", "label smoothing"),
    "reduction": ("mean", "str", "loss reduction", ("mean", "sum", "none")),
    "aux_factor": (0.0, "float", "auxiliary loss factor"),
    # SLAB
    "prepbn_steps": (None, "int", "PRepBN schedule length in optimizer steps (default: the model's total_step)"),
    "prepbn_fraction": (None, "float", "PRepBN schedule as a fraction of the run's optimizer steps"),
    "prepbn_warm": (0, "int", "optimizer steps of pure LayerNorm before the schedule"),
    "recipe_global_batch": (None, "int", "the global batch the recipe's prepbn_steps were set for (upstream: batch per "
                                         "GPU x 8); a run at another global batch is told where its schedule ends "
                                         "and which prepbn_fraction keeps the recipe's share"),
    "bn_recalibrate_epochs": (0, "int", "epochs of BN statistics re-estimation after training"),
    "bn_recalibrate_mode": ("mean", "str", "mean: the plain mean of the batch statistics over un-augmented training "
                                           "data (small runs); upstream: upstream main.py's procedure, BN's moving "
                                           "average at momentum 0.1 over augmented training data (the ImageNet "
                                           "configs, with 10 epochs)", ("mean", "upstream")),
    "bn_recalibrate_batches": (None, "int", "text: at most this many batches per rank for the BN re-estimation "
                                            "(default: bn_recalibrate_epochs whole passes)"),
    "plot": (True, "bool", "write curves.png at the end"),
}

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_bool(name, value):
    """A tool flag's bool (``true/false/yes/no/1/0``), or a ConfigError naming ``--name``."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in _BOOL_WORDS:
        raise ConfigError(f"--{name}: expected true or false, got {value!r}")
    return _BOOL_WORDS[word]


class Config(dict):
    """A dict with attribute access; ``cfg.lr`` is ``cfg["lr"]``."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


def _unknown(key, where):
    near = difflib.get_close_matches(key, SCHEMA, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _coerce(key, value, where):
    """``value`` checked and converted to the key's kind; strings from the command line are parsed."""
    value = _coerce_kind(key, value, where)
    choices = choices_of(key)
    if choices is not None and value is not None and value not in choices:
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"{key} in {where}: {value!r} is not one of {', '.join(map(str, choices))}{hint}")
    return value


def choices_of(key):
    """The values a key may take, or None when any value of its kind goes."""
    spec = SCHEMA[key]
    return spec[3] if len(spec) > 3 else None


def _coerce_kind(key, value, where):
    kind = SCHEMA[key][1]
    if value is None:
        return None
    kinds = kind.split("|")
    if isinstance(value, str) and kinds != ["str"]:
        text = value.strip()
        if text.lower() in ("none", "null", "~"):
            return None
        if "bool" in kinds and text.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[text.lower()]
        if kinds[0] in ("list", "dict"):
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(f"{key} in {where}: cannot parse {value!r} as a {kinds[0]}") from None
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                if "str" in kinds:
                    return value
                raise ConfigError(f"{key} in {where}: expected {kind}, got {value!r}") from None
    for k in kinds:
        if k == "bool" and isinstance(value, bool):
            return value
        if k == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if k == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if k == "str" and isinstance(value, str):
            return value
        if k == "list" and isinstance(value, (list, tuple)):
            return list(value)
        if k == "dict" and isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{key} in {where}: expected {kind}, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------- shipped configs
CONFIG_SUFFIXES = (".yaml", ".yml")


def config_dirs():
    """The folders that hold the shipped configs, first match wins: ``slab_ms/configs`` inside an
    installed package (the wheel carries a copy of the checkout's ``configs/``, made by setup.py at
    build time), then the ``configs/`` folder of the checkout that this slab_ms was imported from
    (``python train.py``, ``pip install -e .``)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    checkout = os.path.dirname(package)
    dirs = [os.path.join(package, "configs")]
    if os.path.isfile(os.path.join(checkout, "pyproject.toml")) and os.path.isfile(os.path.join(checkout, "train.py")):
        dirs.append(os.path.join(checkout, "configs"))   # only this project's checkout, not any site-packages/configs
    return [d for d in dirs if os.path.isdir(d)]


def shipped_configs():
    """``{name: path}`` of the shipped configs (``slab_swin_t`` -> ``.../configs/slab_swin_t.yaml``)."""
    found = {}
    for d in config_dirs():
        for f in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(f)
            if ext in CONFIG_SUFFIXES and os.path.isfile(os.path.join(d, f)):
                found.setdefault(stem, os.path.join(d, f))
    return found


def resolve_config(path):
    """The YAML file ``--config`` names. An existing file is taken as given (relative to the current
    folder). Otherwise a shipped config, by name (``slab_swin_t``, ``slab_swin_t.yaml``) or by its path
    in the checkout (``configs/slab_swin_t.yaml``, what the README's commands say), so those commands
    also work from any folder once the package is installed. Anything else is a ConfigError."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    folder, name = os.path.split(path.replace("\\", "/"))
    stem, ext = os.path.splitext(name)
    if folder not in ("", "configs", "./configs") or ext not in CONFIG_SUFFIXES + ("",):
        raise ConfigError(f"config file {path} not found")
    shipped = shipped_configs()
    if stem in shipped:
        return shipped[stem]
    near = difflib.get_close_matches(stem, shipped, n=3)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise ConfigError(f"config file {path} not found: no such file and no shipped config of that name{hint} "
                      "(--list-configs lists them)")


def describe_configs():
    """One line per shipped config: its name, model and the first line of its leading comment."""
    lines = []
    for name, path in shipped_configs().items():
        try:
            data = read_yaml(path)
        except ConfigError:
            continue
        with open(path, encoding="utf-8") as f:
            first = next((ln.lstrip("# ").strip() for ln in f if ln.startswith("#") and ln.strip("# \n")), "")
        lines.append(f"{name:<22} {str(data.get('model', '')):<20} {first}")
    return lines


def read_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line) instead of printing usage and exiting."""

    def error(self, message):
        raise ConfigError(message)


def build_parser(prog=None, description=None, extra=None):
    """The command line of train.py / validate.py: ``--config`` plus one ``--key`` per schema key
    (``--key-with-dashes`` works too), each listed by ``--help`` with its kind, default and choices.

    Values stay strings here and are checked by :func:`load_config` (kind, choices), so a YAML file
    and the command line are held to the same rules. Only bool keys may go without a value
    (``--ema`` means ``--ema true``). ``extra(parser)`` adds a tool's own flags.
    """
    p = _Parser(prog=prog, description=description, allow_abbrev=False,
                usage="%(prog)s [--config FILE] [--key VALUE ...]",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML config file; command-line values override its keys")
    if extra is not None:
        extra(p)
    g = p.add_argument_group("config keys", "every key of the YAML schema; command line > YAML file > default")
    for key, spec in SCHEMA.items():
        default, kind, text = spec[:3]
        choices = choices_of(key)
        info = f"{kind}, default {default!r}" + (f", one of: {', '.join(map(str, choices))}" if choices else "")
        flags = ["--" + key] + (["--" + key.replace("_", "-")] if "_" in key else [])
        kw = dict(dest=key, default=argparse.SUPPRESS, help=f"{text} [{info}]".replace("%", "%%"))
        if kind == "bool":
            g.add_argument(*flags, nargs="?", const="true", metavar="{true,false}", **kw)
        else:
            g.add_argument(*flags, metavar=kind.split("|")[0].upper(), **kw)
    return p


def parse_args(parser, argv):
    """``parser.parse_args(argv)`` as a dict of the flags given (``config`` included when given);
    an unknown flag is a ConfigError naming the closest known key."""
    args, rest = parser.parse_known_args(argv)
    for arg in rest:
        if arg.startswith("--"):
            raise _unknown(arg[2:].split("=", 1)[0].replace("-", "_"), "the command line")
    if rest:
        raise ConfigError(f"unexpected argument {rest[0]!r}: flags are --key value")
    return vars(args)


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """``['--lr', '1e-3', '--ema', '--x=1']`` -> ``{'lr': '1e-3', 'ema': 'true', 'x': '1'}`` (schema keys
    and ``config`` only; values are checked by :func:`load_config`)."""
    got = parse_args(build_parser(), argv)
    return {k: v for k, v in got.items() if v is not None or k != "config"}


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides, every key checked; returns a ``Config``. ``path`` is a
    YAML file or a shipped config's name (:func:`resolve_config`); ``cfg.config`` is the file read.
    Paths inside the config (``data_dir``, ``ckpt_save_dir``, ...) are relative to the current
    folder, not to the config file."""
    cfg = Config({k: (list(v[0]) if isinstance(v[0], list) else dict(v[0]) if isinstance(v[0], dict) else v[0])
                  for k, v in SCHEMA.items()})
    layers = []
    if path:
        path = resolve_config(path)
        layers.append((read_yaml(path), path))
    if overrides:
        layers.append((dict(overrides), "the command line"))
    origins = {}   # key -> the layer that set it; the rest are defaults (see origin())
    for data, where in layers:
        # prepbn_steps and prepbn_fraction are one setting in two units: a layer that sets one of
        # them replaces what an earlier layer said with the other
        for a, b in (("prepbn_steps", "prepbn_fraction"), ("prepbn_fraction", "prepbn_steps")):
            if a in data and b not in data:
                cfg[b] = None
                origins[b] = where
        for key, value in data.items():
            if key == "config":
                continue
            if key not in SCHEMA:
                raise _unknown(key, where)
            cfg[key] = _coerce(key, value, where)
            origins[key] = where
    cfg["config"] = path or ""
    object.__setattr__(cfg, "_origins", origins)   # an attribute, not a key: never a config key itself
    validate(cfg)
    return cfg


def origin(cfg, key):
    """Where ``cfg[key]`` came from: a YAML file's path, ``"the command line"`` or ``"default"``; None
    for a Config that :func:`load_config` did not make (a copy)."""
    origins = cfg.__dict__.get("_origins")
    if origins is None:
        return None
    return origins.get(key, "default")


def _source(cfg, key):
    """`` (default)``, `` (the command line)``, `` (from X.yaml)`` or nothing: for error messages."""
    where = origin(cfg, key)
    if where is None:
        return ""
    return f" ({where})" if where in ("default", "the command line") else f" (from {os.path.basename(where)})"


def note_defaults(cfg, message):
    """``message`` with a note for each config key it names that nobody set, so that an error about a
    default value says so (``data_dir './' is the default``) instead of reading as the user's mistake."""
    import re
    unset = [k for k in SCHEMA if origin(cfg, k) == "default"
             and re.search(rf"(?<![\w.-]){re.escape(k)}(?![\w-])", message)]
    if not unset:
        return message
    notes = ", ".join(f"{k} {cfg[k]!r}" for k in unset)
    flags = " / ".join("--" + k for k in unset)
    return (f"{message} [{notes}: the default{'s' if len(unset) > 1 else ''}, set neither in a config nor on the "
            f"command line; give {flags}]")


def run_splits(cfg):
    """The data splits a training run reads: the training split, and the validation split when it
    validates or recalibrates BN."""
    return [cfg.train_split] + ([cfg.val_split] if cfg.val_while_train or cfg.bn_recalibrate_epochs else [])


def validate(cfg):
    """Value checks that do not need the data or the model."""
    def positive(*keys):
        for k in keys:
            if cfg[k] is None or cfg[k] <= 0:
                raise ConfigError(f"{k} must be > 0, got {cfg[k]}")
    positive("batch_size", "epoch_size", "gradient_accumulation_steps", "lr", "num_classes", "image_resize",
             "ckpt_save_interval", "val_interval", "log_interval")
    if cfg.keep_checkpoint_max < 1:
        raise ConfigError(f"keep_checkpoint_max must be >= 1, got {cfg.keep_checkpoint_max}")
    if cfg.prepbn_steps is not None and cfg.prepbn_fraction is not None:
        raise ConfigError("set prepbn_steps or prepbn_fraction, not both")
    if cfg.prepbn_steps is not None and cfg.prepbn_steps <= 0:
        raise ConfigError(f"prepbn_steps must be > 0, got {cfg.prepbn_steps}")
    if cfg.prepbn_fraction is not None and not 0 < cfg.prepbn_fraction <= 1:
        raise ConfigError(f"prepbn_fraction must be in (0, 1], got {cfg.prepbn_fraction}")
    if cfg.prepbn_warm < 0 or cfg.bn_recalibrate_epochs < 0:
        raise ConfigError("prepbn_warm and bn_recalibrate_epochs must be >= 0")
    if cfg.warmup_steps is None and (cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epoch_size):
        # name where each value came from: epoch_size 1 on the command line against the default
        # warm-up of 20 epochs is the user's epoch_size meeting a default they never saw
        raise ConfigError(f"warmup_epochs {cfg.warmup_epochs}{_source(cfg, 'warmup_epochs')} must be within "
                          f"0..epoch_size, which is {cfg.epoch_size}{_source(cfg, 'epoch_size')}"
                          + ("; set --warmup_epochs too" if origin(cfg, "warmup_epochs") == "default" else ""))
    if cfg.pretrained:
        raise ConfigError("pretrained: SLAB weights are not downloaded; convert an official checkpoint with "
                          "convert.py and pass it as ckpt_path")
    if cfg.loss_scale is None or cfg.loss_scale < 1:
        raise ConfigError(f"loss_scale must be >= 1, got {cfg.loss_scale}")
    if cfg.ema and not 0 < cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    if cfg.seq_length < 2:
        raise ConfigError(f"seq_length must be >= 2, got {cfg.seq_length}")
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise ConfigError(f"max_steps must be > 0, got {cfg.max_steps}")
    if cfg.warmup_steps is not None and cfg.warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.bn_recalibrate_batches is not None and cfg.bn_recalibrate_batches <= 0:
        raise ConfigError(f"bn_recalibrate_batches must be > 0, got {cfg.bn_recalibrate_batches}")
    if cfg.sink_size is not None and cfg.sink_size <= 0:
        raise ConfigError(f"sink_size must be > 0, got {cfg.sink_size}")
    if cfg.ckpt_save_steps < 0:
        raise ConfigError(f"ckpt_save_steps must be >= 0, got {cfg.ckpt_save_steps}")
    if not 0 < cfg.val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5], got {cfg.val_fraction}")
    for k in ("scale", "ratio", "re_scale", "re_ratio"):
        if len(cfg[k]) != 2:
            raise ConfigError(f"{k} must be a pair [low, high], got {cfg[k]}")
