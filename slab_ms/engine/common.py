"""What the image and the text runs share: context and seeds, the configured model, mixed
precision, learning rates, the optimizer, logging, the progress bar and the parameter digest."""
import hashlib
import logging
import logging.handlers
import math
import os
import random
import sys

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler

from ..errors import ConfigError
from ..layers.prepbn import PRepBN, RepBN, TokenBatchNorm
from ..models.registry import create_model, is_model

logger = logging.getLogger("slab_ms.train")


def setup_context(cfg):
    """GRAPH/PYNATIVE mode, device, seeds and (when ``distribute``) the collective group.
    Returns ``(rank, world, device_target)``."""
    mode = ms.GRAPH_MODE if cfg.mode == 0 else ms.PYNATIVE_MODE
    if cfg.device_target == "auto":
        ms.set_context(mode=mode)
        target = ms.get_context("device_target")
    else:
        target = cfg.device_target
        ms.set_context(mode=mode, device_target=target)
    if "DEVICE_ID" in os.environ and target != "CPU":   # rank-table launches name the device per process
        ms.set_context(device_id=int(os.environ["DEVICE_ID"]))
    rank, world = 0, 1
    if cfg.distribute:
        from mindspore.communication import get_group_size, get_rank, init
        init()
        rank, world = get_rank(), get_group_size()
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world)
    level = jit_level_for(cfg, target)
    if level is not None:
        ms.set_context(jit_config={"jit_level": level})
    ms.set_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return rank, world, target


def build_model(cfg):
    """The configured model (image size, classes, drop rates, model_kwargs), or a ConfigError."""
    if not is_model(cfg.model):
        raise ConfigError(f"unknown model {cfg.model!r}; see slab_ms.list_models()")
    kwargs = dict(num_classes=cfg.num_classes, in_channels=cfg.in_channels, img_size=cfg.image_resize)
    if cfg.drop_rate is not None:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    kwargs.update(cfg.model_kwargs)
    return create_model(cfg.model, **kwargs)


def jit_level_for(cfg, target):
    """The graph compile level: ``jit_level``, or for ``auto`` O2 in graph mode on Ascend (as mindcv
    sets it) and MindSpore's own default elsewhere (None)."""
    if cfg.jit_level != "auto":
        return cfg.jit_level
    return "O2" if target == "Ascend" and cfg.mode == 0 else None


def sink_mode_for(cfg, target):
    """Dataset sink mode: ``dataset_sink_mode``, or when unset on for Ascend and off elsewhere (the
    per-step loop compiles faster on CPU and runs as fast: docs/training.md, sink mode)."""
    if cfg.dataset_sink_mode is not None:
        return bool(cfg.dataset_sink_mode)
    return target == "Ascend"


def amp_level_for(cfg, target):
    return ("O2" if target == "Ascend" else "O0") if cfg.amp_level == "auto" else cfg.amp_level


def apply_amp(net, level):
    """MindSpore AMP at ``level``; norms stay float32 (the SLA core computes in float32 itself)."""
    if level == "O0":
        return net
    ms.amp.auto_mixed_precision(net, level)
    for _, cell in net.cells_and_names():
        if isinstance(cell, (TokenBatchNorm, RepBN, PRepBN, nn.LayerNorm)):
            cell.to_float(ms.float32)
    return net


def upstream_cosine(total_steps, warmup_steps, cosine_steps, lr, min_lr, warmup_lr):
    """Upstream's schedule (SLAB ``lr_scheduler.py``: timm ``CosineLRScheduler(t_initial=cosine_steps,
    lr_min, warmup_lr_init, warmup_t=warmup_steps, cycle_limit=1, t_in_epochs=False)``), per step:
    linear warm-up from ``warmup_lr``, a cosine from ``lr`` to ``min_lr`` over ``cosine_steps``
    counted from step 0 (the warm-up replaces its start), then ``min_lr``."""
    out = []
    for t in range(total_steps):
        if t < warmup_steps:
            out.append(warmup_lr + t * (lr - warmup_lr) / warmup_steps)
        elif t < cosine_steps:
            out.append(min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t / cosine_steps)))
        else:
            out.append(min_lr)
    return out


def learning_rates(cfg, steps_per_epoch, global_batch, total_steps=None):
    """Per-optimizer-step learning rates, linearly scaled by the global batch (base, warm-up start and
    minimum alike): upstream's cosine for ``scheduler: cosine``, else mindcv's scheduler.
    ``total_steps`` (default ``epoch_size`` epochs) may end inside an epoch (``max_steps``);
    ``warmup_steps`` replaces ``warmup_epochs`` (upstream's cosine only)."""
    scale = global_batch / cfg.lr_base_batch if cfg.lr_base_batch else 1.0
    total = total_steps if total_steps is not None else cfg.epoch_size * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else cfg.warmup_epochs * steps_per_epoch
    if warmup > total:
        raise ConfigError(f"the warm-up ({warmup} optimizer steps) is longer than the run ({total})")
    if cfg.scheduler == "cosine":
        cosine = cfg.decay_epochs * steps_per_epoch if cfg.decay_epochs is not None else total
        return upstream_cosine(total, warmup, cosine, cfg.lr * scale, cfg.min_lr * scale,
                               cfg.lr * cfg.warmup_factor * scale)
    if cfg.warmup_steps is not None:
        raise ConfigError("warmup_steps needs scheduler: cosine (mindcv's schedulers warm up in whole epochs: "
                          "use warmup_epochs)")
    epochs = -(-total // steps_per_epoch)
    decay = cfg.decay_epochs if cfg.decay_epochs is not None else epochs - cfg.warmup_epochs
    lrs = create_scheduler(steps_per_epoch, scheduler=cfg.scheduler, lr=cfg.lr * scale, min_lr=cfg.min_lr * scale,
                           warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor, decay_epochs=decay,
                           decay_rate=cfg.decay_rate, milestones=cfg.multi_step_decay_milestones,
                           num_epochs=epochs, num_cycles=cfg.num_cycles, cycle_decay=cfg.cycle_decay,
                           lr_epoch_stair=cfg.lr_epoch_stair)
    return [float(v) for v in lrs][:total]


def build_optimizer(cfg, net, lrs):
    kwargs = {}
    if cfg.opt in ("adam", "adamw"):
        kwargs = dict(beta1=cfg.beta1, beta2=cfg.beta2)
    opt = create_optimizer(net, opt=cfg.opt, lr=lrs, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                           nesterov=cfg.use_nesterov,
                           weight_decay_filter="norm_and_bias" if cfg.filter_bias_and_bn else "disable",
                           **kwargs)
    if cfg.opt in ("adam", "adamw") and hasattr(opt, "eps"):   # mindcv does not forward eps to AdamW
        opt.eps = Tensor(np.array([cfg.eps]).astype(np.float32)) if isinstance(opt.eps, Tensor) else cfg.eps
    return opt


def setup_logging(rank):
    """Log to stdout with the rank in every line. Rank 0 also keeps the records, so that
    :func:`log_to_file` puts them into train.log: a run opens its output folder only once every
    start-up check has passed, and a refused run leaves nothing behind."""
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(_log_format(rank))
    logger.addHandler(stream)
    if rank == 0:   # no target yet: the records stay until log_to_file gives them one
        logger.addHandler(logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1))


def log_to_file(out_dir, rank):
    """On rank 0, ``out_dir/train.log`` (appended to): the records kept since :func:`setup_logging`,
    then every later one."""
    if rank != 0:
        return
    fh = logging.FileHandler(os.path.join(out_dir, "train.log"))
    fh.setFormatter(_log_format(rank))
    for h in list(logger.handlers):
        if isinstance(h, logging.handlers.MemoryHandler):
            h.setTarget(fh)
            h.flush()
            logger.removeHandler(h)
            h.close()
    logger.addHandler(fh)


def _log_format(rank):
    return logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S")


def parameter_digest(net):
    """SHA-256 over every parameter (name, dtype, bytes): equal digests mean identical replicas."""
    h = hashlib.sha256()
    for name, p in net.parameters_and_names():
        a = np.ascontiguousarray(p.asnumpy())
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def progress_bar(rank, total, desc):
    """A tqdm bar on rank 0 when stderr is a terminal, else None."""
    if rank != 0 or not sys.stderr.isatty():   # logs (log_interval) carry the same figures
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                leave=False)
