"""The training run behind train.py: mindcv data, optimizer, scheduler and loss around the
SLAB-specific parts (one-forward train step, PRepBN schedule, BN sync and recalibration,
EMA without the counters, exact resume)."""
import math
import os
import sys
import time

import numpy as np
from mindspore import nn
from mindcv.loss import create_loss

from ..checkpoint import load_checkpoint, load_pretrained, model_params, read_ms_checkpoint
from ..errors import ConfigError, TrainingError
from ..layers.prepbn import TokenBatchNorm
from ..layers.reparam import reparameterize
from . import data as data_lib
from . import report, state
from .common import (amp_level_for, apply_amp, build_model, build_optimizer, jit_level_for, learning_rates, logger,
                     log_to_file, parameter_digest, progress_bar, setup_context, setup_logging, sink_mode_for)
from .config import run_splits
from .recalibrate import UPSTREAM_MOMENTUM, recalibrate_bn
from .schedule import apply_schedule, current_lambda, plan_schedule, prepbn_cells, recipe_note
from .sink import SinkLoop, sink_plan
from .train_step import AllReduceParams, Logits, NetWithLoss, Stepper, SumOverRanks, make_loss_scaler

def evaluate(net, loader, world=1, forward=None, reducer=None):
    """``(top1, top5, n)`` with top-k as fractions over the ``n`` images evaluated (undecodable files
    are skipped, never replaced). Counts are summed over ranks when world > 1 (pass the run's
    ``reducer``, a :class:`SumOverRanks`, to reuse its graph). Pass the same ``forward``
    (``Logits(net)``) on every call to compile the eval graph once."""
    net.set_train(False)
    forward = forward or Logits(net)
    counts = np.zeros(3, np.float32)
    for x, y in data_lib.eval_batches(loader):
        logits = forward(x).asnumpy()
        labels = y.asnumpy().reshape(-1)
        top = np.argsort(-logits, axis=1)[:, :5]
        counts += (float((top[:, 0] == labels).sum()), float((top == labels[:, None]).any(axis=1).sum()),
                   float(len(labels)))
    if world > 1:
        counts = (reducer or SumOverRanks(3))(counts)
    if counts[2] == 0:
        raise ConfigError("the validation split holds no decodable images")
    return float(counts[0] / counts[2]), float(counts[1] / counts[2]), int(counts[2])


# ----------------------------------------------------------------------------- the run
class Run:
    """One training run. Reading order: ``__init__`` builds (context, data, model, optimizer, train
    step) and refuses a run that cannot work, :meth:`start` resumes or initialises and then creates
    the output folder, :meth:`train_epoch` and :meth:`end_epoch` make one epoch, :meth:`finish`
    recalibrates, keeps the best model and writes the summary. :meth:`fit` chains them."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.rank, self.world, self.target = setup_context(cfg)
        self.out = cfg.ckpt_save_dir
        # every check that can refuse the run (data, model, schedule, then in start() the resume and
        # ckpt_path) comes before ckpt_save_dir and train.log exist: start() creates them
        setup_logging(self.rank)
        self._check_data()
        self._build()

    # --------------------------------------------------------------------- building
    def _check_data(self):
        cfg = self.cfg
        splits = run_splits(cfg)
        self.needs_val = len(splits) > 1
        self.decoders, self.classes = {}, None   # per split: records the image files that cannot be used
        for split in splits:
            found, self.decoders[split] = data_lib.check_image_folder(
                cfg.data_dir, split, cfg.num_classes, cfg.max_bad_images, rank=self.rank, world=self.world)
            self.classes = self.classes or found   # the training split's
        _report_bad_images(cfg, self.decoders)

    def _build(self):
        """Model, step plan, learning rates, PRepBN schedule, optimizer, train step and BN sync; the
        task-specific parts are the ``_``-methods a subclass (``lm_trainer.LMRun``) replaces."""
        cfg, world = self.cfg, self.world
        self.net = net = self._build_model()
        self.amp = amp_level_for(cfg, self.target)
        apply_amp(net, self.amp)
        self.k = k = cfg.gradient_accumulation_steps
        self._plan_steps()
        self.global_batch = cfg.batch_size * world * k
        self.lrs = self._learning_rates()
        self.has_prepbn = bool(prepbn_cells(net))
        explicit = cfg.prepbn_steps is not None or cfg.prepbn_fraction is not None
        # fine-tuning (ckpt_path) without a schedule in the config keeps the checkpoint's counters
        self.inherit_schedule = bool(cfg.ckpt_path) and not explicit and self.has_prepbn
        self.schedule = None if self.inherit_schedule else plan_schedule(cfg, net, self.total_steps)
        self.optimizer = build_optimizer(cfg, net, self.lrs)
        dynamic = cfg.dynamic_loss_scale if cfg.dynamic_loss_scale is not None else self.amp != "O0"
        reducer = nn.DistributedGradReducer(self.optimizer.parameters, mean=True, degree=world) \
            if world > 1 else None
        # dataset sink mode: the PRepBN counters move in the graph (upstream's in-forward rule);
        # the per-step loop moves them from Python (less compile time, the same numbers)
        self.sink_mode = sink_mode_for(cfg, self.target)
        self.stepper = Stepper(self._net_with_loss(), self.optimizer, accumulation=k,
                               loss_scale=make_loss_scaler(cfg.loss_scale, dynamic=dynamic), grad_reducer=reducer,
                               clip_value=cfg.clip_value if cfg.clip_grad else None,
                               ema_decay=cfg.ema_decay if cfg.ema else None, network=net,
                               schedule="forward" if self.sink_mode else "step")
        self.sink_loop = SinkLoop(self.stepper, cfg.sink_size or self.steps_per_epoch,
                                  jit_level_for(cfg, self.target)) if self.sink_mode else None
        self.sync = self.rank_sum = None
        if world > 1:   # BN running statistics (and their EMA) are per-rank; average them before use
            bn_stats = [p for p in net.get_parameters() if p.name.endswith(("moving_mean", "moving_variance"))]
            ema_stats = [a for p, a in self.stepper.ema_pairs
                         if p.name.endswith(("moving_mean", "moving_variance"))]
            self.sync = AllReduceParams(bn_stats + ema_stats, 1.0 / world) if bn_stats else None
            self.rank_sum = SumOverRanks(3)
        self._build_eval()

    def _build_model(self):
        return build_model(self.cfg)

    def _plan_steps(self):
        """``steps_per_epoch`` and ``total_steps`` (optimizer steps) from the training data."""
        cfg, k = self.cfg, self.k
        if cfg.max_steps is not None or cfg.ckpt_save_steps:
            raise ConfigError("max_steps and ckpt_save_steps are for language models; an image run counts epochs "
                              "(epoch_size, ckpt_save_interval)")
        # ImageNet listing is slow: this loader is reused for epoch 0
        self.first_loader = self.train_loader(0)
        batches = self.first_loader.get_dataset_size()
        self.steps_per_epoch = batches // k
        if self.steps_per_epoch == 0:
            raise ConfigError(f"an epoch has {batches} batches of {cfg.batch_size} per device, fewer than "
                              f"gradient_accumulation_steps ({k}): no optimizer step would run")
        self.total_steps = self.steps_per_epoch * cfg.epoch_size

    def _learning_rates(self):
        return learning_rates(self.cfg, self.steps_per_epoch, self.global_batch)

    def _net_with_loss(self):
        cfg = self.cfg
        loss_fn = create_loss(name=cfg.loss, label_smoothing=cfg.label_smoothing, reduction=cfg.reduction,
                              aux_factor=cfg.aux_factor)
        return NetWithLoss(self.net, loss_fn)

    def _build_eval(self):
        cfg = self.cfg
        self.eval_forward = Logits(self.net)
        self.val_loader = data_lib.eval_loader(cfg, rank=self.rank, world=self.world,
                                               decoder=self.decoders.get(cfg.val_split)) if self.needs_val else None

    def train_loader(self, epoch, **kw):
        return data_lib.train_loader(self.cfg, self.rank, self.world, epoch=epoch,
                                     decoder=self.decoders[self.cfg.train_split], **kw)

    # --------------------------------------------------------------------- resume or start
    def start(self):
        """Resume (``resume``), start from weights (``ckpt_path``) or start fresh. Fills ``meta``
        and ``history``; returns the checkpoint resumed from, or None."""
        cfg = self.cfg
        self.meta = {"epoch": 0, "step": 0, "world_size": self.world, "best_top1": None, "best_epoch": None,
                     "prepbn_steps": self.schedule[0] if self.schedule else None,
                     "prepbn_warm": self.schedule[1] if self.schedule else None, "accumulation": self.k}
        resumed = self._resume() if cfg.resume else None
        if resumed is None:
            if cfg.ckpt_path:
                self._load_pretrained()
            if self.schedule is not None:
                apply_schedule(self.net, self.schedule[0], self.schedule[1], self.k)
            self.stepper.reset_ema()   # the average starts from the weights the run starts from
        start_epoch, step = self.meta["epoch"], self.meta["step"]
        self._check_position(start_epoch, step)
        self.history = report.read_history(os.path.join(self.out, "history.json"), start_epoch,
                                           step if self.mid_epoch_resume else None) if resumed else \
            {"epochs": [], "steps": []}
        self.resumed_from = resumed
        self._open_output()
        return resumed

    def _open_output(self):
        """The run is accepted: ``ckpt_save_dir`` and train.log (with the lines logged so far)."""
        os.makedirs(self.out, exist_ok=True)
        log_to_file(self.out, self.rank)

    mid_epoch_resume = False   # checkpoints are written at epoch ends only
    rate_unit = "img/s"

    def _check_position(self, epoch, step):
        """A resumed checkpoint must sit where this run's plan puts its epoch."""
        if step != epoch * self.steps_per_epoch:
            raise TrainingError(f"the checkpoint is at optimizer step {step} after {epoch} epochs, but this "
                                f"run has {self.steps_per_epoch} steps per epoch (different data, batch size or "
                                "world size)")

    def _resume(self):
        cfg = self.cfg

        def load(path):
            return state.restore_state(path, self.net, self.optimizer, self.stepper)
        if cfg.resume == "auto":
            path, got = state.newest_loadable(cfg.ckpt_save_dir, cfg.model, load)
        else:
            path, got = cfg.resume, load(cfg.resume)
        if path is None:
            return None
        for key in ("world_size", "accumulation", "prepbn_steps", "prepbn_warm"):
            if got.get(key) != self.meta[key]:
                raise TrainingError(f"cannot resume {path}: it was trained with {key} {got.get(key)}, this run "
                                    f"has {self.meta[key]} (the schedules would not line up)")
        self.meta.update(got)
        return path

    def _load_pretrained(self):
        """Weights from ``ckpt_path``; a classifier of another shape is re-initialised (fine-tuning).
        Without a schedule in the config, the PRepBN counters come from the checkpoint: a finished
        schedule stays finished (pure RepBN); one still running must end within this run."""
        cfg = self.cfg
        reinit = load_pretrained(self.net, model_params(read_ms_checkpoint(cfg.ckpt_path)), what=cfg.ckpt_path)
        if reinit:
            logger.info(f"fine-tuning from {cfg.ckpt_path}: re-initialised {', '.join(reinit)} (the checkpoint's "
                        f"classifier has another shape); every other parameter loaded")
        if self.inherit_schedule:
            left = max(int(c.warm.asnumpy()) + int(c.iter.asnumpy()) for c in prepbn_cells(self.net))
            if left > self.total_steps * self.k:
                raise ConfigError(f"the PRepBN schedule of {cfg.ckpt_path} has {left} training forwards to go, "
                                  f"more than this run's {self.total_steps * self.k}; set prepbn_steps or "
                                  "prepbn_fraction to restart it")
            logger.info(f"PRepBN schedule kept from {cfg.ckpt_path}: lambda {current_lambda(self.net):.4f}"
                        + (" (finished: RepBN only)" if left == 0 else f", {left} forwards to go"))

    # --------------------------------------------------------------------- one epoch
    def train_epoch(self, epoch):
        """The optimizer steps of one epoch; returns the epoch's history record (no validation yet)."""
        cfg = self.cfg
        loader = self.first_loader if epoch == 0 else self.train_loader(epoch)
        decoder = self.decoders[cfg.train_split]
        with data_lib.error_samples_mode(data_lib.ds.config.ErrorSamplesMode.REPLACE):
            batches = loader if self.sink_loop is not None and self.sink_loop.device_sink else \
                loader.create_tuple_iterator(num_epochs=1)
            loss, rate = self._train_steps(epoch, batches, self.steps_per_epoch, cfg.epoch_size,
                                           units=lambda batch: batch[0].shape[0] * self.world,
                                           check=lambda: decoder.check_limit(cfg.max_bad_images, cfg.train_split))
        return {"epoch": epoch + 1, "step": self.meta["step"], "loss": loss,
                "lambda": current_lambda(self.net) if self.has_prepbn else None,
                "images_per_second": rate, "top1": None, "top5": None}

    def _train_steps(self, epoch, batches, steps, epochs, units, check=None, stops=(), after=None):
        """``steps`` optimizer steps of epoch ``epoch`` (of ``epochs``) from ``batches`` (micro-batch
        input tuples; the dataset itself when the sink runs on the device), by the per-step loop or
        in sinks of ``sink_size`` steps that also end at every step of ``stops``. ``units(batch)``:
        images or tokens of a micro-batch over all ranks; ``check()`` runs after every micro-step
        (per sink in sink mode); ``after(step)`` after every optimizer step (per sink in sink mode).
        Returns the mean micro-step loss and the units per second after the first call (compile)."""
        self.net.set_train(True)
        start = self.meta["step"]
        bar = progress_bar(self.rank, steps, f"epoch {epoch + 1}/{epochs}")
        clock = _Throughput()
        losses = []
        if self.sink_loop is None:
            k = self.k
            for i, batch in enumerate(batches):
                if i >= steps * k:
                    break
                loss, applied, finite = self.stepper.step(*batch)
                self._check_finite(loss, epoch)
                losses.append(loss)
                if check is not None:
                    check()
                clock.tick(units(batch))
                if applied:
                    self._log_steps(epoch, [float(np.mean(losses[-k:]))], [finite], clock.rate(), bar)
                    if after is not None:
                        after(self.meta["step"])
        else:
            units_per_step = None
            for n in sink_plan(start, start + steps, self.sink_loop.sink_size, stops):
                step_losses, finite = self.sink_loop.run(batches, n)
                for loss in step_losses:
                    self._check_finite(float(loss), epoch)
                losses.extend(float(v) for v in step_losses)
                if check is not None:
                    check()
                if units_per_step is None:
                    units_per_step = self._units_per_step(units)
                clock.tick(units_per_step * n)
                self._log_steps(epoch, [float(v) for v in step_losses], [bool(f) for f in finite], clock.rate(), bar)
                if after is not None:
                    after(self.meta["step"])
        if bar is not None:
            bar.close()
        return (float(np.mean(losses)) if losses else None), clock.rate() or None

    def _units_per_step(self, units):
        """Images (or tokens) of one optimizer step over all ranks (sink mode counts per sink)."""
        return self.k * self.world * self.cfg.batch_size * (self.cfg.seq_length if self.rate_unit == "tokens/s" else 1)

    def _check_finite(self, loss, epoch):
        if not math.isfinite(loss):
            raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, optimizer step {self.meta['step'] + 1}"
                                + (" or a later step of its sink" if self.sink_loop is not None else "")
                                + f"; stopping. The last good checkpoint is kept in {self.out}")

    def _log_steps(self, epoch, losses, finite, rate, bar):
        """History records of the optimizer steps just made (one, or a sink's); lambda is read
        after the last of them, the progress bar and the log advance once."""
        lam = current_lambda(self.net) if self.has_prepbn else None
        first = self.meta["step"] + 1
        self.meta["step"] += len(losses)
        step = self.meta["step"]
        for s, (loss, ok) in enumerate(zip(losses, finite), first):
            self.history["steps"].append({"step": s, "epoch": epoch + 1, "loss": loss, "lr": self.lrs[s - 1],
                                          "lambda": lam if s == step else None, "finite": ok})
        loss, lr = losses[-1], self.lrs[step - 1]
        mean = float(np.mean(losses))
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", lam="-" if lam is None else f"{lam:.3f}",
                            rate=f"{rate:.1f}")
            bar.update(len(losses))
        interval = self.cfg.log_interval
        if (step // interval) > ((first - 1) // interval) or step == self.total_steps:
            sunk = f" (mean of {len(losses)} steps {mean:.4f})" if len(losses) > 1 else ""
            logger.info(f"epoch {epoch + 1} step {step}/{self.total_steps} loss {loss:.4f}{sunk} lr {lr:.3e} "
                        f"lambda {'-' if lam is None else f'{lam:.4f}'} {rate:.1f} {self.rate_unit}")

    def evaluate(self):
        return evaluate(self.net, self.val_loader, self.world, self.eval_forward, self.rank_sum)

    def end_epoch(self, ep):
        """Synchronise BN statistics, validate, keep the best, checkpoint and log one epoch."""
        cfg, epoch = self.cfg, ep["epoch"]
        if self.sync is not None:
            self.sync()
        last = epoch == cfg.epoch_size
        if cfg.val_while_train and (epoch % cfg.val_interval == 0 or last):
            ep["top1"], ep["top5"], _ = self.evaluate()
            if self.meta["best_top1"] is None or ep["top1"] > self.meta["best_top1"]:
                self.meta["best_top1"], self.meta["best_epoch"] = ep["top1"], epoch
                ep["best"] = True
        self.history["epochs"].append(ep)
        self.meta["epoch"] = epoch
        scheduled = epoch % cfg.ckpt_save_interval == 0 or last
        if self.rank == 0 and (scheduled or ep.get("best")):   # a best epoch between checkpoints too
            ckpt = self.training_state()
            if scheduled:
                state.save_state(state.epoch_path(self.out, cfg.model, epoch), ckpt)
            if ep.get("best"):
                state.save_state(os.path.join(self.out, "best.ckpt"), ckpt)
            state.prune(self.out, cfg.model, cfg.keep_checkpoint_max)
            report.write_json(os.path.join(self.out, "history.json"), self.history)
        logger.info(f"epoch {epoch} done: loss {ep['loss']:.4f}"
                    + (f", val top-1 {100 * ep['top1']:.2f}% top-5 {100 * ep['top5']:.2f}%" if ep["top1"] is not None
                       else "") + (f", lambda {ep['lambda']:.4f}" if ep["lambda"] is not None else ""))
        _report_bad_images(cfg, self.decoders)   # after the checkpoint: over the limit, this epoch is kept

    def training_state(self):
        return state.collect_state(self.net, self.optimizer, self.stepper, self.meta)

    # --------------------------------------------------------------------- the end
    def recalibrate(self):
        """Re-estimate the BN statistics over ``bn_recalibrate_epochs`` passes over the training data:
        ``bn_recalibrate_mode`` mean (un-augmented, the plain mean of the batch statistics) or upstream
        (augmented as in training without mixup, BN's moving average at momentum 0.1); returns the
        batches used (0 when not configured or the model has no BN)."""
        cfg = self.cfg
        if not cfg.bn_recalibrate_epochs or not _has_bn(self.net):
            return 0
        upstream = cfg.bn_recalibrate_mode == "upstream"
        used = 0
        for e in range(cfg.bn_recalibrate_epochs):
            used += recalibrate_bn(self.net, self._recalibration_batches(e, augment=upstream),
                                   forward=self.recalibration_forward, momentum=UPSTREAM_MOMENTUM if upstream else None)
        if self.sync is not None:
            self.sync()
        return used

    recalibration_forward = Logits   # what recalibrate_bn runs the batches through

    def _recalibration_batches(self, e, augment=False):
        """The training batches of recalibration pass ``e`` (a fresh data order), without mixup and
        un-augmented unless ``augment``."""
        loader = self.train_loader(self.cfg.epoch_size + e, mixup=False, augment=augment)
        return (x for x, _ in data_lib.train_batches(loader))

    def finish(self):
        cfg, history = self.cfg, self.history
        top1 = top5 = None
        if history["epochs"] and history["epochs"][-1]["top1"] is not None:
            top1, top5 = history["epochs"][-1]["top1"], history["epochs"][-1]["top5"]
        recal = self.recalibrate()
        best_recalibrated = False
        if recal:
            top1, top5, _ = self.evaluate()
            logger.info(f"BN recalibrated over {recal} batches: val top-1 {100 * top1:.2f}% top-5 {100 * top5:.2f}%")
            if history["epochs"]:
                history["epochs"][-1] = dict(history["epochs"][-1], recalibrated_top1=top1, recalibrated_top5=top5)
            best_recalibrated = self._keep_if_best(top1)
        _report_bad_images(cfg, self.decoders)
        rates = [e["images_per_second"] for e in history["epochs"] if e.get("images_per_second")]
        digest = parameter_digest(self.net)
        logger.info(f"parameter digest {digest}")   # every rank logs it: data-parallel replicas must agree
        summary = {
            "model": cfg.model, "top1": top1, "top5": top5, "epochs": cfg.epoch_size, "steps": self.meta["step"],
            "world_size": self.world, "prepbn_lambda": current_lambda(self.net) if self.has_prepbn else None,
            "images_per_second": float(np.mean(rates)) if rates else None, "best_top1": self.meta["best_top1"],
            "best_epoch": self.meta["best_epoch"], "best_recalibrated": best_recalibrated,
            "bn_recalibrated_batches": recal, "global_batch": self.global_batch, "device_target": self.target,
            "amp_level": self.amp,
            "final_loss": history["steps"][-1]["loss"] if history["steps"] else None,
            "checkpoint": os.path.join(self.out, "final.ckpt"), "config": cfg.config, "parameter_digest": digest,
            "bad_images": {split: len(d) for split, d in self.decoders.items()},
        }
        return self._write_final(summary, f"{cfg.model} ({self.world} x {cfg.batch_size})")

    def _keep_if_best(self, top1):
        """After BN recalibration: the recalibrated model becomes best.ckpt (and best_top1/best_epoch)
        unless an epoch validated higher before it, so that best.ckpt is always the best model this
        run made and validate.py on it gives best_top1. Returns whether it did."""
        if self.meta["best_top1"] is not None and top1 < self.meta["best_top1"]:
            logger.info(f"best.ckpt stays epoch {self.meta['best_epoch']} (val top-1 "
                        f"{100 * self.meta['best_top1']:.2f}%, above the recalibrated model's)")
            return False
        self.meta["best_top1"], self.meta["best_epoch"] = top1, self.meta["epoch"]
        if self.rank == 0:
            state.save_state(os.path.join(self.out, "best.ckpt"), self.training_state())
            logger.info(f"best.ckpt: the recalibrated model of epoch {self.meta['epoch']} (val top-1 "
                        f"{100 * top1:.2f}%)")
        return True

    def _write_final(self, summary, title):
        """On rank 0: final.ckpt, history.json, curves.png (titled ``title``) and summary.json;
        returns ``summary`` there, None on the other ranks."""
        if self.rank != 0:
            return None
        state.save_state(os.path.join(self.out, "final.ckpt"), self.training_state())
        report.write_json(os.path.join(self.out, "history.json"), self.history)
        if self.cfg.plot:
            report.plot_curves(self.history, os.path.join(self.out, "curves.png"), title)
        report.write_json(os.path.join(self.out, "summary.json"), summary)
        logger.info(f"summary written to {os.path.join(self.out, 'summary.json')}")
        return summary

    def fit(self):
        self.start()
        cfg, start_epoch = self.cfg, self.meta["epoch"]
        logger.info(f"{cfg.model}: {sum(p.size for p in self.net.trainable_params()) / 1e6:.2f} M parameters, "
                    f"{len(self.classes)} classes, device {self.target}, amp {self.amp}, world {self.world}, "
                    f"global batch {self.global_batch}")
        plan = (f"{self.schedule[1]} warm + {self.schedule[0]} steps" if self.schedule else
                "kept from ckpt_path" if self.inherit_schedule else "none")
        logger.info(f"{cfg.epoch_size} epochs x {self.steps_per_epoch} optimizer steps = {self.total_steps}; "
                    f"lr peak {max(self.lrs):.3g}; PRepBN {plan}"
                    + (f"; resumed from {self.resumed_from} at epoch {start_epoch}, step {self.meta['step']}"
                       if self.resumed_from else ""))
        note = recipe_note(cfg, self.steps_per_epoch, self.global_batch, self.total_steps) if self.schedule else None
        if note:
            logger.warning(note)
        for epoch in range(start_epoch, cfg.epoch_size):
            self.end_epoch(self.train_epoch(epoch))
        return self.finish()


def validate_image_checkpoint(cfg, split=None, use_ema=False, reparam=False):
    """What validate.py reports for an image model: top-1/top-5 of ``cfg.ckpt_path`` on ``split``
    (default val_split), undecodable files skipped, counted and warned about. ``reparam`` evaluates
    the folded network."""
    setup_context(cfg)
    split = split or cfg.val_split
    _, decoder = data_lib.check_image_folder(cfg.data_dir, split, cfg.num_classes, cfg.max_bad_images)
    net = build_model(cfg)
    load_checkpoint(net, cfg.ckpt_path, use_ema=use_ema)
    if reparam:
        reparameterize(net)
    top1, top5, n = evaluate(net, data_lib.eval_loader(cfg, split=split, decoder=decoder))
    for path, why in decoder.new_failures():
        print(f"warning: {path} skipped: {why}", file=sys.stderr)
    decoder.check_limit(cfg.max_bad_images, split)
    return {"model": cfg.model, "checkpoint": cfg.ckpt_path, "ema": use_ema, "reparam": reparam, "images": n,
            "top1": top1, "top5": top5, "bad_images": len(decoder)}


def _report_bad_images(cfg, decoders):
    """Log the image files found bad since the last call, then enforce max_bad_images per split.
    In data parallel each rank reports (and limits) what its own shard decoded."""
    for split, decoder in decoders.items():
        fresh = decoder.new_failures()
        if fresh:
            listed = "; ".join(f"{p} ({why})" for p, why in fresh[:5]) + (" ..." if len(fresh) > 5 else "")
            action = "skips them in evaluation" if split != cfg.train_split else "uses other samples in their place"
            logger.warning(f"{len(fresh)} unusable image files found in {split}/, {len(decoder)} so far (at most "
                           f"max_bad_images={cfg.max_bad_images}); the pipeline {action}: {listed}")
        decoder.check_limit(cfg.max_bad_images, split)


class _Throughput:
    """Units per second, not counting the first call (it includes graph compilation)."""

    def __init__(self):
        self.t0, self.units = None, 0

    def tick(self, units):
        if self.t0 is None:
            self.t0 = time.perf_counter()
        else:
            self.units += units

    def rate(self):
        elapsed = time.perf_counter() - self.t0 if self.t0 is not None else 0.0
        return self.units / elapsed if self.units and elapsed else 0.0


def _has_bn(net):
    return any(isinstance(c, TokenBatchNorm) for _, c in net.cells_and_names())


