"""The training run behind train.py: mindcv data, optimizer, scheduler and loss around the
SLAB-specific parts (one-forward train step, PRepBN schedule, BN sync and recalibration,
EMA without the counters, exact resume)."""
import logging
import math
import os
import random
import sys
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from mindcv.loss import create_loss
from mindcv.optim import create_optimizer
from mindcv.scheduler import create_scheduler

from ..checkpoint import load_param_dict, model_params, read_ms_checkpoint
from ..layers.prepbn import PRepBN, RepBN, TokenBatchNorm
from ..models.registry import create_model, is_model
from . import data as data_lib
from . import report, state
from .config import ConfigError
from .recalibrate import recalibrate_bn
from .schedule import apply_schedule, current_lambda, plan_schedule
from .train_step import AllReduceMean, LossScale, NetWithLoss, Stepper

logger = logging.getLogger("slab_ms.train")


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss, unusable resume state); the message is for the user."""


# ----------------------------------------------------------------------------- set-up
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


def learning_rates(cfg, steps_per_epoch, global_batch):
    """Per-optimizer-step learning rates (mindcv scheduler), linearly scaled by the global batch."""
    scale = global_batch / cfg.lr_base_batch if cfg.lr_base_batch else 1.0
    decay = cfg.decay_epochs if cfg.decay_epochs is not None else cfg.epoch_size - cfg.warmup_epochs
    lrs = create_scheduler(steps_per_epoch, scheduler=cfg.scheduler, lr=cfg.lr * scale, min_lr=cfg.min_lr * scale,
                           warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor, decay_epochs=decay,
                           decay_rate=cfg.decay_rate, milestones=cfg.multi_step_decay_milestones,
                           num_epochs=cfg.epoch_size, num_cycles=cfg.num_cycles, cycle_decay=cfg.cycle_decay,
                           lr_epoch_stair=cfg.lr_epoch_stair)
    return [float(v) for v in lrs]


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


class _Logits(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x):
        return self.net(x).astype(ms.float32)


class _SumOverRanks(nn.Cell):
    def __init__(self):
        super().__init__()
        self.allreduce = ops.AllReduce()

    def construct(self, x):
        return self.allreduce(x)


def evaluate(net, loader, world=1, forward=None):
    """``(top1, top5, n)`` with top-k as fractions; counts are summed over ranks when world > 1.
    Pass the same ``forward`` (``_Logits(net)``) on every call to compile the eval graph once."""
    net.set_train(False)
    forward = forward or _Logits(net)
    counts = np.zeros(3, np.float32)
    for x, y in loader.create_tuple_iterator(num_epochs=1):
        logits = forward(x).asnumpy()
        labels = y.asnumpy().reshape(-1)
        top = np.argsort(-logits, axis=1)[:, :5]
        counts += (float((top[:, 0] == labels).sum()), float((top == labels[:, None]).any(axis=1).sum()),
                   float(len(labels)))
    if world > 1:
        counts = _SumOverRanks()(Tensor(counts)).asnumpy()
    if counts[2] == 0:
        raise ConfigError("the validation split holds no images")
    return float(counts[0] / counts[2]), float(counts[1] / counts[2]), int(counts[2])


def setup_logging(out_dir, rank):
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if rank == 0:
        fh = logging.FileHandler(os.path.join(out_dir, "train.log"))
        fh.setFormatter(fmt)
        logger.addHandler(fh)


# ----------------------------------------------------------------------------- the run
def train(cfg):
    """Run the configured training; returns the summary dict (also written to summary.json)."""
    rank, world, target = setup_context(cfg)
    out = cfg.ckpt_save_dir
    os.makedirs(out, exist_ok=True)
    setup_logging(out, rank)
    splits = [cfg.train_split] + ([cfg.val_split] if cfg.val_while_train or cfg.bn_recalibrate_epochs else [])
    decoders, classes = {}, None   # per split: records the image files that cannot be used
    for split in splits:
        found, decoders[split] = data_lib.check_image_folder(cfg.data_dir, split, cfg.num_classes,
                                                             cfg.max_bad_images)
        classes = classes or found   # the training split's
    _report_bad_images(cfg, decoders)

    net = build_model(cfg)
    amp = amp_level_for(cfg, target)
    apply_amp(net, amp)
    k = cfg.gradient_accumulation_steps
    # ImageNet listing is slow: this loader is reused for epoch 0
    first_loader = data_lib.train_loader(cfg, rank, world, epoch=0, decoder=decoders[cfg.train_split])
    batches = first_loader.get_dataset_size()
    steps_per_epoch = batches // k
    if steps_per_epoch == 0:
        raise ConfigError(f"an epoch has {batches} batches of {cfg.batch_size} per device, fewer than "
                          f"gradient_accumulation_steps ({k}): no optimizer step would run")
    total_steps = steps_per_epoch * cfg.epoch_size
    global_batch = cfg.batch_size * world * k
    lrs = learning_rates(cfg, steps_per_epoch, global_batch)
    schedule = plan_schedule(cfg, net, total_steps)
    optimizer = build_optimizer(cfg, net, lrs)
    loss_fn = create_loss(name=cfg.loss, label_smoothing=cfg.label_smoothing, reduction=cfg.reduction,
                          aux_factor=cfg.aux_factor)
    dynamic = cfg.dynamic_loss_scale if cfg.dynamic_loss_scale is not None else amp != "O0"
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=world) if world > 1 else None
    stepper = Stepper(NetWithLoss(net, loss_fn), optimizer, accumulation=k,
                      loss_scale=LossScale(cfg.loss_scale, dynamic=dynamic), grad_reducer=reducer,
                      clip_value=cfg.clip_value if cfg.clip_grad else None,
                      ema_decay=cfg.ema_decay if cfg.ema else None, network=net)
    sync = None
    if world > 1:   # BN running statistics (and their EMA) are per-rank; average them before use
        bn_stats = [p for p in net.get_parameters() if p.name.endswith(("moving_mean", "moving_variance"))]
        ema_stats = [a for p, a in stepper.ema_pairs if p.name.endswith(("moving_mean", "moving_variance"))]
        sync = AllReduceMean(bn_stats + ema_stats, world) if bn_stats else None

    meta = {"epoch": 0, "step": 0, "world_size": world, "best_top1": None, "best_epoch": None,
            "prepbn_steps": schedule[0] if schedule else None, "prepbn_warm": schedule[1] if schedule else None,
            "accumulation": k}
    resumed_from = _start_state(cfg, net, optimizer, stepper, meta, schedule, k)
    start_epoch, step = meta["epoch"], meta["step"]
    if step != start_epoch * steps_per_epoch:
        raise TrainingError(f"the checkpoint is at optimizer step {step} after {start_epoch} epochs, but this run "
                            f"has {steps_per_epoch} steps per epoch (different data, batch size or world size)")
    history = report.read_history(os.path.join(out, "history.json"), start_epoch) if resumed_from else \
        {"epochs": [], "steps": []}

    logger.info(f"{cfg.model}: {sum(p.size for p in net.trainable_params()) / 1e6:.2f} M parameters, "
                f"{len(classes)} classes, device {target}, amp {amp}, world {world}, global batch {global_batch}")
    logger.info(f"{cfg.epoch_size} epochs x {steps_per_epoch} optimizer steps = {total_steps}; lr peak "
                f"{max(lrs):.3g}; PRepBN " + (f"{schedule[1]} warm + {schedule[0]} steps" if schedule else "none")
                + (f"; resumed from {resumed_from} at epoch {start_epoch}, step {step}" if resumed_from else ""))

    ips_window = []
    eval_forward = _Logits(net)
    val_loader = data_lib.eval_loader(cfg, rank=rank, world=world, decoder=decoders.get(cfg.val_split)) \
        if cfg.val_while_train or cfg.bn_recalibrate_epochs else None   # built once, iterated per validation
    for epoch in range(start_epoch, cfg.epoch_size):
        loader = first_loader if epoch == 0 else \
            data_lib.train_loader(cfg, rank, world, epoch=epoch, decoder=decoders[cfg.train_split])
        net.set_train(True)
        bar = _progress(rank, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epoch_size}")
        seen, t0, losses = 0, None, []
        for i, (x, y) in enumerate(loader.create_tuple_iterator(num_epochs=1)):
            if i >= steps_per_epoch * k:
                break
            loss, applied, finite = stepper.step(x, y)
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, optimizer step {step + 1}; stopping. "
                                    f"The last good checkpoint is kept in {out}")
            losses.append(loss)
            decoders[cfg.train_split].check_limit(cfg.max_bad_images, cfg.train_split)
            if t0 is None:
                t0 = time.perf_counter()   # the first step includes graph compilation
            else:
                seen += x.shape[0] * world
            if not applied:
                continue
            step += 1
            lam = current_lambda(net) if schedule else None
            rec = {"step": step, "epoch": epoch + 1, "loss": float(np.mean(losses[-k:])), "lr": lrs[step - 1],
                   "lambda": lam, "finite": finite}
            history["steps"].append(rec)
            ips = seen / (time.perf_counter() - t0) if seen else 0.0
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                lam="-" if lam is None else f"{lam:.3f}", ips=f"{ips:.1f}")
                bar.update(1)
            if step % cfg.log_interval == 0 or step == total_steps:
                logger.info(f"epoch {epoch + 1} step {step}/{total_steps} loss {rec['loss']:.4f} lr {rec['lr']:.3e} "
                            f"lambda {'-' if lam is None else f'{lam:.4f}'} {ips:.1f} img/s")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0 if t0 else 0.0
        if seen and elapsed:
            ips_window.append(seen / elapsed)
        if sync is not None:
            sync()
        ep = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)) if losses else None,
              "lambda": current_lambda(net) if schedule else None, "images_per_second": ips_window[-1]
              if ips_window else None, "top1": None, "top5": None}
        last = epoch + 1 == cfg.epoch_size
        if cfg.val_while_train and ((epoch + 1) % cfg.val_interval == 0 or last):
            ep["top1"], ep["top5"], _ = evaluate(net, val_loader, world, eval_forward)
            if meta["best_top1"] is None or ep["top1"] > meta["best_top1"]:
                meta["best_top1"], meta["best_epoch"] = ep["top1"], epoch + 1
                ep["best"] = True
        history["epochs"].append(ep)
        meta.update(epoch=epoch + 1, step=step)
        if rank == 0 and ((epoch + 1) % cfg.ckpt_save_interval == 0 or last):
            ckpt = state.collect_state(net, optimizer, stepper, meta)
            state.save_state(state.epoch_path(out, cfg.model, epoch + 1), ckpt)
            if ep.get("best"):
                state.save_state(os.path.join(out, "best.ckpt"), ckpt)
            state.prune(out, cfg.model, cfg.keep_checkpoint_max)
            report.write_json(os.path.join(out, "history.json"), history)
        logger.info(f"epoch {epoch + 1} done: loss {ep['loss']:.4f}"
                    + (f", val top-1 {100 * ep['top1']:.2f}% top-5 {100 * ep['top5']:.2f}%" if ep["top1"] is not None
                       else "") + (f", lambda {ep['lambda']:.4f}" if ep["lambda"] is not None else ""))
        _report_bad_images(cfg, decoders)   # after the checkpoint: over the limit, this epoch is kept

    top1 = top5 = None
    if history["epochs"] and history["epochs"][-1]["top1"] is not None:
        top1, top5 = history["epochs"][-1]["top1"], history["epochs"][-1]["top5"]
    recal = 0
    if cfg.bn_recalibrate_epochs and _has_bn(net):
        for e in range(cfg.bn_recalibrate_epochs):
            loader = data_lib.train_loader(cfg, rank, world, epoch=cfg.epoch_size + e, mixup=False, augment=False,
                                           decoder=decoders[cfg.train_split])
            recal += recalibrate_bn(net, (x for x, _ in loader.create_tuple_iterator(num_epochs=1)))
        if sync is not None:
            sync()
        top1, top5, _ = evaluate(net, val_loader, world, eval_forward)
        logger.info(f"BN recalibrated over {recal} batches: val top-1 {100 * top1:.2f}% top-5 {100 * top5:.2f}%")
        history["epochs"][-1:] = [dict(history["epochs"][-1], recalibrated_top1=top1, recalibrated_top5=top5)] \
            if history["epochs"] else []
    _report_bad_images(cfg, decoders)
    ips = float(np.mean(ips_window)) if ips_window else None
    digest = parameter_digest(net)
    logger.info(f"parameter digest {digest}")   # every rank logs it: data-parallel replicas must agree
    summary = {
        "model": cfg.model, "top1": top1, "top5": top5, "epochs": cfg.epoch_size, "steps": step,
        "world_size": world, "prepbn_lambda": current_lambda(net) if schedule else None,
        "images_per_second": ips, "best_top1": meta["best_top1"], "best_epoch": meta["best_epoch"],
        "bn_recalibrated_batches": recal, "global_batch": global_batch, "device_target": target, "amp_level": amp,
        "final_loss": history["steps"][-1]["loss"] if history["steps"] else None,
        "checkpoint": os.path.join(out, "final.ckpt"), "config": cfg.config, "parameter_digest": digest,
        "bad_images": {split: len(d) for split, d in decoders.items()},
    }
    if rank == 0:
        state.save_state(os.path.join(out, "final.ckpt"), state.collect_state(net, optimizer, stepper, meta))
        report.write_json(os.path.join(out, "history.json"), history)
        if cfg.plot:
            report.plot_curves(history, os.path.join(out, "curves.png"), f"{cfg.model} ({world} x {cfg.batch_size})")
        report.write_json(os.path.join(out, "summary.json"), summary)
        logger.info(f"summary written to {os.path.join(out, 'summary.json')}")
    return summary if rank == 0 else None


def _report_bad_images(cfg, decoders):
    """Log the image files found bad since the last call, then enforce max_bad_images per split.
    In data parallel each rank reports (and limits) what its own shard decoded."""
    for split, decoder in decoders.items():
        fresh = decoder.new_failures()
        if fresh:
            listed = "; ".join(f"{p} ({why})" for p, why in fresh[:5]) + (" ..." if len(fresh) > 5 else "")
            logger.warning(f"{len(fresh)} unusable image files found in {split}/, {len(decoder)} so far (at most "
                           f"max_bad_images={cfg.max_bad_images}); the pipeline uses other samples in their "
                           f"place: {listed}")
        decoder.check_limit(cfg.max_bad_images, split)


def parameter_digest(net):
    """SHA-256 over every parameter (name, dtype, bytes): equal digests mean identical replicas."""
    import hashlib
    h = hashlib.sha256()
    for name, p in net.parameters_and_names():
        a = np.ascontiguousarray(p.asnumpy())
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _has_bn(net):
    return any(isinstance(c, TokenBatchNorm) for _, c in net.cells_and_names())


def _progress(rank, total, desc):
    if rank != 0 or not sys.stderr.isatty():   # logs (log_interval) carry the same figures
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                leave=False)


def _start_state(cfg, net, optimizer, stepper, meta, schedule, k):
    """Resume (``resume``), start from weights (``ckpt_path``) or start fresh; fills ``meta``.
    Returns the checkpoint resumed from, or None."""
    if cfg.resume:
        def load(path):
            return state.restore_state(path, net, optimizer, stepper)
        if cfg.resume == "auto":
            path, got = state.newest_loadable(cfg.ckpt_save_dir, cfg.model, load)
        else:
            path, got = cfg.resume, load(cfg.resume)
        if path is not None:
            for key in ("world_size", "accumulation", "prepbn_steps", "prepbn_warm"):
                if got.get(key) != meta[key]:
                    raise TrainingError(f"cannot resume {path}: it was trained with {key} {got.get(key)}, this run "
                                        f"has {meta[key]} (the schedules would not line up)")
            meta.update(got)
            return path
    if cfg.ckpt_path:
        load_param_dict(net, model_params(read_ms_checkpoint(cfg.ckpt_path)), what=cfg.ckpt_path)
    if schedule is not None:
        apply_schedule(net, schedule[0], schedule[1], k)
    stepper.reset_ema()   # the average starts from the weights the run starts from
    return None
