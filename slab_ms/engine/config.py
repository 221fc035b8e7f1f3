"""Training configuration: mindcv's flat YAML keys plus the few SLAB adds, typed and checked.

``load_config(path, overrides)`` reads a YAML file, applies ``--key value`` overrides and
returns a ``Config`` (attribute access). Every key must be known: a typo in a YAML file or on
the command line is an error naming the closest known key, never a silently ignored setting.
"""
import argparse
import ast
import difflib
import os

import yaml


class ConfigError(ValueError):
    """A bad config file or value; the message is one line meant for the user."""


# key: (default, kind, help). kind: bool, int, float, str, list, dict, or "int|float" style unions;
# None defaults stay None unless set. Names follow mindcv's config.py where mindcv has the key.
SCHEMA = {
    # system
    "mode": (0, "int", "0: GRAPH_MODE (default), 1: PYNATIVE_MODE"),
    "device_target": ("auto", "str", "auto, CPU, GPU or Ascend"),
    "distribute": (False, "bool", "data-parallel run (set by scripts/run_distribute.sh)"),
    "seed": (42, "int", "seed for numpy, random, MindSpore and the data order"),
    "log_interval": (100, "int", "log a line every N optimizer steps"),
    "val_while_train": (True, "bool", "validate after every val_interval epochs"),
    "val_interval": (1, "int", "epochs between validations"),
    "ckpt_path": ("", "str", "initialise the model from this checkpoint (model weights only)"),
    "resume": ("", "str", "resume a run: a training checkpoint, or 'auto' for the newest in ckpt_save_dir"),
    "pretrained": (False, "bool", "mindcv key; SLAB weights are converted with convert.py instead"),
    # data
    "dataset": ("imagenet", "str", "imagenet (any ImageFolder tree with train/ and val/)"),
    "data_dir": ("./", "str", "dataset root holding train_split/ and val_split/"),
    "train_split": ("train", "str", "training sub-folder"),
    "val_split": ("val", "str", "validation sub-folder"),
    "max_bad_images": (100, "int", "image files per split that may fail the start-up content check or the decode "
                                   "(replaced in the pipeline, counted and logged); more is an error; -1: no limit "
                                   "and no start-up check"),
    "image_decoder": ("pillow", "str", "pillow: decode in Python with Pillow, checked and counted (max_bad_images); "
                                       "mindspore: mindcv's native decode ops, faster for training but a damaged "
                                       "JPEG can crash the process (bench/bench_data.py)"),
    "num_parallel_workers": (8, "int", "data pipeline workers per device"),
    "shuffle": (True, "bool", "shuffle the training data"),
    "num_samples": (None, "int", "use only this many training images (per shard)"),
    "batch_size": (128, "int", "images per device per micro-step"),
    "drop_remainder": (True, "bool", "drop the last incomplete training batch"),
    # augmentation
    "image_resize": (224, "int", "network input size"),
    "scale": ([0.08, 1.0], "list", "random-resized-crop area range"),
    "ratio": ([0.75, 1.333], "list", "random-resized-crop aspect range"),
    "hflip": (0.5, "float", "horizontal flip probability"),
    "vflip": (0.0, "float", "vertical flip probability"),
    "color_jitter": (0.4, "float", "colour jitter strength (None or 0 disables)"),
    "interpolation": ("bicubic", "str", "resize interpolation"),
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
    "amp_level": ("auto", "str", "auto (O2 on Ascend, O0 elsewhere), O0, O1, O2, O3"),
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
    "opt": ("adamw", "str", "mindcv optimizer name"),
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
    "scheduler": ("cosine_decay", "str", "mindcv scheduler name"),
    "lr": (5e-4, "float", "peak learning rate (per lr_base_batch images when that is set)"),
    "lr_base_batch": (512, "int", "scale lr, min_lr by global batch / this (0: no scaling)"),
    "min_lr": (5e-6, "float", "final learning rate of the cosine"),
    "warmup_epochs": (20, "int", "linear warm-up epochs"),
    "warmup_factor": (0.001, "float", "warm-up starts at lr * warmup_factor (5e-7 for lr 5e-4)"),
    "decay_epochs": (None, "int", "cosine length (default: epoch_size - warmup_epochs)"),
    "decay_rate": (0.9, "float", "step/exponential decay rate"),
    "multi_step_decay_milestones": ([30, 60, 90], "list", "multi_step_decay epochs"),
    "lr_epoch_stair": (False, "bool", "update the lr once per epoch"),
    "num_cycles": (1, "int", "cosine cycles"),
    "cycle_decay": (1.0, "float", "cosine cycle decay"),
    # loss
    "loss": ("CE", "str", "CE or BCE"),
    "label_smoothing": (0.1, "float", "label smoothing"),
    "reduction": ("mean", "str", "loss reduction"),
    "aux_factor": (0.0, "float", "auxiliary loss factor"),
    # SLAB
    "prepbn_steps": (None, "int", "PRepBN schedule length in optimizer steps (default: the model's total_step)"),
    "prepbn_fraction": (None, "float", "PRepBN schedule as a fraction of the run's optimizer steps"),
    "prepbn_warm": (0, "int", "optimizer steps of pure LayerNorm before the schedule"),
    "bn_recalibrate_epochs": (0, "int", "epochs of BN statistics re-estimation after training"),
    "plot": (True, "bool", "write curves.png at the end"),
}

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


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
    default, kind, _ = SCHEMA[key]
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


def parse_overrides(argv):
    """``['--lr', '1e-3', '--ema', 'true', '--x=1']`` -> ``{'lr': '1e-3', 'ema': 'true', 'x': '1'}``."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides are --key value")
        key = arg[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        else:  # a bare flag: --ema means --ema true
            value = "true"
            i += 1
        out[key] = value
    return out


def load_config(path=None, overrides=None):
    """Defaults <- YAML file <- overrides, every key checked; returns a ``Config``."""
    cfg = Config({k: (list(v[0]) if isinstance(v[0], list) else dict(v[0]) if isinstance(v[0], dict) else v[0])
                  for k, v in SCHEMA.items()})
    layers = []
    if path:
        layers.append((read_yaml(path), path))
    if overrides:
        layers.append((dict(overrides), "the command line"))
    for data, where in layers:
        # prepbn_steps and prepbn_fraction are one setting in two units: a layer that sets one of
        # them replaces what an earlier layer said with the other
        for a, b in (("prepbn_steps", "prepbn_fraction"), ("prepbn_fraction", "prepbn_steps")):
            if a in data and b not in data:
                cfg[b] = None
        for key, value in data.items():
            if key == "config":
                continue
            if key not in SCHEMA:
                raise _unknown(key, where)
            cfg[key] = _coerce(key, value, where)
    cfg["config"] = path or ""
    validate(cfg)
    return cfg


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
    if cfg.warmup_epochs < 0 or cfg.warmup_epochs > cfg.epoch_size:
        raise ConfigError(f"warmup_epochs {cfg.warmup_epochs} must be within 0..epoch_size ({cfg.epoch_size})")
    if cfg.device_target not in ("auto", "CPU", "GPU", "Ascend"):
        raise ConfigError(f"device_target must be auto, CPU, GPU or Ascend, got {cfg.device_target!r}")
    if cfg.amp_level not in ("auto", "O0", "O1", "O2", "O3"):
        raise ConfigError(f"amp_level must be auto, O0, O1, O2 or O3, got {cfg.amp_level!r}")
    if cfg.dataset.lower() not in ("imagenet", ""):
        raise ConfigError(f"dataset {cfg.dataset!r} is not supported: use an ImageFolder tree with dataset: imagenet")
    if cfg.pretrained:
        raise ConfigError("pretrained: SLAB weights are not downloaded; convert an official checkpoint with "
                          "convert.py and pass it as ckpt_path")
    if cfg.image_decoder not in ("pillow", "mindspore"):
        raise ConfigError(f"image_decoder must be pillow or mindspore, got {cfg.image_decoder!r}")
    if cfg.mode not in (0, 1):
        raise ConfigError(f"mode must be 0 (GRAPH_MODE) or 1 (PYNATIVE_MODE), got {cfg.mode}")
    if cfg.ema and not 0 < cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in (0, 1), got {cfg.ema_decay}")
    for k in ("scale", "ratio", "re_scale", "re_ratio"):
        if len(cfg[k]) != 2:
            raise ConfigError(f"{k} must be a pair [low, high], got {cfg[k]}")


def main(argv=None):
    """``python -m slab_ms.engine.config CONFIG [--get KEY] [overrides]``: print a value (for the scripts)."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("config")
    p.add_argument("--get", required=True)
    args, rest = p.parse_known_args(argv)
    cfg = load_config(args.config, parse_overrides(rest))
    print(cfg[args.get])


if __name__ == "__main__":
    import sys
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
