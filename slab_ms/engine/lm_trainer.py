"""The training run of a language model (a registered LLaMA) on a text corpus: the vision
:class:`~slab_ms.engine.trainer.Run` with text data, the causal-LM loss and perplexity.

Shared with the vision run: config keys and their checks, mindcv's AdamW (no weight decay on
norms, biases and the embedding: ``LlamaForCausalLM.no_weight_decay``), the learning-rate
schedules, the one-forward train step (loss scaling, AMP, clipping, gradient accumulation, EMA),
the PRepBN schedule (translated into the LLaMA's 16-forward counters), atomic training
checkpoints, data-parallel gradient and BN-statistics reduction, BN recalibration, history.json,
curves.png, summary.json and the progress bar.

Different: the data are fixed-length token blocks (:mod:`slab_ms.lm.text_data`); a run is
``max_steps`` optimizer steps or ``epoch_size`` passes over the corpus; ``ckpt_save_steps`` adds
checkpoints inside an epoch and a resume continues from that very step (the block order of an
epoch depends only on the seed and the epoch, so the skipped batches are known); validation
reports perplexity, and the best checkpoint is the one of lowest validation loss. Checkpoints
are numbered by optimizer step (``<model>-<step>.ckpt``) and each has a ``.config.json`` beside
it, so ``generate.py``, ``validate.py`` and ``convert.py --to hf`` rebuild the model from it.
"""
import itertools
import math
import os

import numpy as np

from ..convert.hf import hf_config_for, sidecar_path, sidecar_record
from ..errors import ConfigError, TrainingError
from ..models.registry import create_model, is_model
from . import report, state
from ..lm import text_data
from ..lm.loss import CausalLMLoss, TokenNLL, batch_tensors, perplexity_of
from ..lm.tokenizer import load_tokenizer
from .schedule import current_lambda
from .train_step import SumOverRanks
from .common import learning_rates, logger, parameter_digest, setup_context
from .sink import as_dataset
from .trainer import Run

TOKEN_KEYS = ("bos_token_id", "eos_token_id")


def build_lm(cfg, tokenizer=None):
    """The configured language model: ``model_kwargs`` over the registered sizes; bos/eos ids from
    the tokenizer unless ``model_kwargs`` sets them."""
    if not is_model(cfg.model):
        raise ConfigError(f"unknown model {cfg.model!r}; see slab_ms.list_models('language')")
    kwargs = dict(cfg.model_kwargs)
    if tokenizer is not None:
        for key, value in zip(TOKEN_KEYS, (tokenizer.bos_id, tokenizer.eos_id)):
            if value >= 0:
                kwargs.setdefault(key, value)
    try:
        return create_model(cfg.model, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model_kwargs do not fit {cfg.model}: {e}") from None


def lm_config(cfg):
    """The configured language model's constructor arguments, without building it (the launch
    check reads the vocabulary and the positions of a 350M model without allocating it)."""
    import inspect
    from ..models.llama import LLAMA_DEFAULTS, LlamaForCausalLM
    if cfg.model not in LLAMA_DEFAULTS:
        raise ConfigError(f"unknown language model {cfg.model!r}; see slab_ms.list_models('language')")
    params = inspect.signature(LlamaForCausalLM).parameters
    unknown = sorted(set(cfg.model_kwargs) - set(params))
    if unknown:
        raise ConfigError(f"model_kwargs do not fit {cfg.model}: unknown {', '.join(unknown)}")
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    found = dict(defaults, **LLAMA_DEFAULTS[cfg.model])
    found.update(cfg.model_kwargs)
    return found


def model_overrides(net, name):
    """``net.config`` entries that differ from the registered ``name``'s defaults (what the
    ``.config.json`` records so the checkpoint can be rebuilt)."""
    from ..models.llama import LLAMA_DEFAULTS, LlamaForCausalLM
    from ..models.registry import overrides_from_defaults
    return overrides_from_defaults(LlamaForCausalLM, LLAMA_DEFAULTS.get(name, {}), dict(net.config))


def load_text(cfg, model_config, log=None):
    """``(train TokenStream, val TokenStream, tokenizer)`` for ``cfg``, the corpus tokenised once
    and cached (checks: a tokenizer is given and fits the vocabulary, seq_length fits)."""
    if not cfg.tokenizer:
        raise ConfigError("a language model needs tokenizer: a SentencePiece model file (make one from the "
                          "training split with scripts/train_tokenizer.py)")
    text_data.check_seq_length(cfg.seq_length, model_config["max_position_embeddings"])
    tok = load_tokenizer(cfg.tokenizer, model_config["vocab_size"])
    data = text_data.build_or_load(cfg.data_dir, cfg.tokenizer, text_field=cfg.text_field,
                                   val_fraction=cfg.val_fraction, cache_dir=cfg.token_cache_dir,
                                   vocab_size=model_config["vocab_size"], log=log or (lambda *_: None))
    return data["train"], data["val"], tok, data


class LMRun(Run):
    """One language-model training run; see the module docstring."""

    mid_epoch_resume = True
    rate_unit = "tokens/s"

    # --------------------------------------------------------------------- building
    def _check_data(self):
        cfg = self.cfg
        tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
        self._lm = build_lm(cfg, tok)
        self.train_stream, self.val_stream, self.tokenizer, data = load_text(
            cfg, self._lm.config, log=logger.info if self.rank == 0 else None)
        self.data_info = {"cache": data["cache"], "cache_built": data["built"],
                          "train_tokens": self.train_stream.n_tokens, "val_tokens": self.val_stream.n_tokens}
        self.needs_val = True
        self.decoders, self.classes = {}, None

    def _build_model(self):
        return self._lm

    def _plan_steps(self):
        cfg, k = self.cfg, self.k
        T, B = cfg.seq_length, cfg.batch_size
        batches = self.train_stream.num_batches(T, B, self.world)
        self.steps_per_epoch = batches // k
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training split has {self.train_stream.num_blocks(T)} blocks of {T} tokens, "
                              f"fewer than one optimizer step needs ({B} per device x {self.world} devices x "
                              f"{k} accumulation): use a larger corpus or a smaller batch")
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epoch_size
        self.epochs = -(-self.total_steps // self.steps_per_epoch)
        if self.val_stream.num_blocks(T) == 0:
            raise ConfigError("the validation split holds no tokens")

    def _learning_rates(self):
        return learning_rates(self.cfg, self.steps_per_epoch, self.global_batch, self.total_steps)

    def _net_with_loss(self):
        return CausalLMLoss(self.net)

    def _build_eval(self):
        self.eval_forward = TokenNLL(self.net)
        self.rank_sum = SumOverRanks(2) if self.world > 1 else None

    def _check_position(self, epoch, step):
        lo, hi = epoch * self.steps_per_epoch, min((epoch + 1) * self.steps_per_epoch, self.total_steps)
        if not lo <= step <= hi:
            raise TrainingError(f"the checkpoint is at optimizer step {step} in epoch {epoch + 1}, but this run has "
                                f"{self.steps_per_epoch} steps per epoch (different corpus, seq_length, batch size "
                                "or world size)")

    # --------------------------------------------------------------------- one epoch
    def train_epoch(self, epoch):
        """The optimizer steps of epoch ``epoch`` (0-based) from where the run stands."""
        cfg, k, world = self.cfg, self.k, self.world
        T, B = cfg.seq_length, cfg.batch_size
        end = min((epoch + 1) * self.steps_per_epoch, self.total_steps)
        done = self.meta["step"] - epoch * self.steps_per_epoch   # steps of this epoch already made (resume)
        batches = self.train_stream.train_batches(T, B, epoch, cfg.seed, self.rank, world, cfg.shuffle,
                                                  skip=done * k)
        save_every = cfg.ckpt_save_steps
        stops = range(save_every, end, save_every) if save_every else ()

        def save(step):
            if save_every and step % save_every == 0 and step != end:
                self._save(epoch, step)
        tensors = (batch_tensors(b) for b in batches)
        if self.sink_loop is not None and self.sink_loop.device_sink:
            tensors = as_dataset(tensors)
        loss, rate = self._train_steps(epoch, tensors, end - self.meta["step"], self.epochs,
                                       units=lambda batch: B * T * world, stops=stops, after=save)
        return {"epoch": epoch + 1, "step": self.meta["step"], "loss": loss,
                "lambda": current_lambda(self.net) if self.has_prepbn else None,
                "tokens_per_second": rate, "val_loss": None, "val_ppl": None}

    def _save(self, epoch, step, best=False):
        """A training checkpoint at ``step`` (``epoch`` completed epochs), with its .config.json;
        BN statistics are averaged over ranks first so that a resume sees what the run saw."""
        if self.sync is not None:
            self.sync()
        self.meta["epoch"] = epoch
        if self.rank != 0:
            return
        ckpt = self.training_state()
        paths = [state.epoch_path(self.out, self.cfg.model, step)] + ([os.path.join(self.out, "best.ckpt")]
                                                                       if best else [])
        for path in paths:
            self.write_sidecar(path)
            state.save_state(path, ckpt)
        state.prune(self.out, self.cfg.model, self.cfg.keep_checkpoint_max)
        report.write_json(os.path.join(self.out, "history.json"), self.history)

    def write_sidecar(self, ckpt_path):
        record = sidecar_record(self.cfg.model, model_overrides(self.net, self.cfg.model), hf_config_for(self.net))
        report.write_json(sidecar_path(ckpt_path), record)

    def evaluate(self):
        """``(perplexity, mean NLL, targets)`` on the validation split (summed over ranks)."""
        self.net.set_train(False)
        batches = self.val_stream.eval_batches(self.cfg.seq_length, self.cfg.batch_size, self.rank, self.world)
        return perplexity_of(batches, self.eval_forward, self.world, self.rank_sum)

    def end_epoch(self, ep):
        cfg, epoch = self.cfg, ep["epoch"]
        last = self.meta["step"] == self.total_steps
        if self.sync is not None:
            self.sync()
        if cfg.val_while_train and (epoch % cfg.val_interval == 0 or last):
            ep["val_ppl"], ep["val_loss"], _ = self.evaluate()
            if self.meta.get("best_val_loss") is None or ep["val_loss"] < self.meta["best_val_loss"]:
                self.meta["best_val_loss"], self.meta["best_epoch"] = ep["val_loss"], epoch
                ep["best"] = True
        self.history["epochs"].append(ep)
        if epoch % cfg.ckpt_save_interval == 0 or last or ep.get("best"):
            self._save(epoch, self.meta["step"], best=bool(ep.get("best")))
        self.meta["epoch"] = epoch
        logger.info(f"epoch {epoch} done (step {self.meta['step']}): loss {ep['loss']:.4f}"
                    + (f", val loss {ep['val_loss']:.4f} perplexity {ep['val_ppl']:.3f}" if ep["val_ppl"] else "")
                    + (f", lambda {ep['lambda']:.4f}" if ep["lambda"] is not None else ""))

    # --------------------------------------------------------------------- the end
    recalibration_forward = TokenNLL   # (ids, mask) batches: padding stays out of the statistics

    def _recalibration_batches(self, e, augment=False):   # token blocks have no augmentation
        cfg = self.cfg
        batches = self.train_stream.train_batches(cfg.seq_length, cfg.batch_size, self.epochs + e, cfg.seed,
                                                  self.rank, self.world, cfg.shuffle)
        if cfg.bn_recalibrate_batches:
            batches = itertools.islice(batches, cfg.bn_recalibrate_batches)
        return (batch_tensors(b) for b in batches)

    def finish(self):
        cfg, history = self.cfg, self.history
        last = history["epochs"][-1] if history["epochs"] else {}
        ppl, val_loss = last.get("val_ppl"), last.get("val_loss")
        recal = self.recalibrate()
        best_recalibrated = False
        if recal:
            before = ppl
            ppl, val_loss, _ = self.evaluate()
            logger.info(f"BN recalibrated over {recal} batches: val perplexity {ppl:.3f}"
                        + (f" (was {before:.3f})" if before else ""))
            if history["epochs"]:
                history["epochs"][-1] = dict(last, recalibrated_val_ppl=ppl, recalibrated_val_loss=val_loss)
            best_recalibrated = self._keep_if_best(val_loss)
        rates = [e["tokens_per_second"] for e in history["epochs"] if e.get("tokens_per_second")]
        digest = parameter_digest(self.net)
        logger.info(f"parameter digest {digest}")   # every rank logs it: data-parallel replicas must agree
        best = self.meta.get("best_val_loss")
        summary = {
            "model": cfg.model, "task": "language", "val_ppl": ppl, "val_loss": val_loss,
            "best_val_ppl": math.exp(best) if best is not None else None, "best_epoch": self.meta["best_epoch"],
            "best_recalibrated": best_recalibrated,
            "epochs": self.epochs, "steps": self.meta["step"], "world_size": self.world,
            "prepbn_lambda": current_lambda(self.net) if self.has_prepbn else None,
            "norm": self.net.config["norm"], "tokens_per_second": float(np.mean(rates)) if rates else None,
            "bn_recalibrated_batches": recal, "global_batch": self.global_batch, "seq_length": cfg.seq_length,
            "tokens_per_step": self.global_batch * cfg.seq_length, "device_target": self.target,
            "amp_level": self.amp, "final_loss": history["steps"][-1]["loss"] if history["steps"] else None,
            "checkpoint": os.path.join(self.out, "final.ckpt"), "config": cfg.config, "tokenizer": cfg.tokenizer,
            "parameter_digest": digest, **self.data_info,
        }
        if self.rank == 0:
            self.write_sidecar(os.path.join(self.out, "final.ckpt"))
        return self._write_final(summary, f"{cfg.model} ({self.world} x {cfg.batch_size} x {cfg.seq_length} tokens)")

    def _keep_if_best(self, val_loss):
        """After BN recalibration: the recalibrated model becomes best.ckpt (with its .config.json)
        unless an epoch validated lower before it, as the image run does. Returns whether it did."""
        best = self.meta.get("best_val_loss")
        if best is not None and val_loss > best:
            logger.info(f"best.ckpt stays epoch {self.meta['best_epoch']} (val loss {best:.4f}, below the "
                        "recalibrated model's)")
            return False
        self.meta["best_val_loss"], self.meta["best_epoch"] = val_loss, self.meta["epoch"]
        if self.rank == 0:
            path = os.path.join(self.out, "best.ckpt")
            self.write_sidecar(path)
            state.save_state(path, self.training_state())
            logger.info(f"best.ckpt: the recalibrated model (val loss {val_loss:.4f})")
        return True

    def fit(self):
        self.start()
        cfg = self.cfg
        conf = self.net.config
        logger.info(f"{cfg.model} ({conf['norm']}): {sum(p.size for p in self.net.trainable_params()) / 1e6:.2f} M "
                    f"parameters, vocab {conf['vocab_size']}, device {self.target}, amp {self.amp}, world "
                    f"{self.world}, global batch {self.global_batch} x {cfg.seq_length} tokens")
        plan = f"{self.schedule[1]} warm + {self.schedule[0]} steps" if self.schedule else "none"
        logger.info(f"corpus: {self.train_stream.n_tokens} training and {self.val_stream.n_tokens} validation "
                    f"tokens; {self.total_steps} optimizer steps ({self.steps_per_epoch} per epoch); lr peak "
                    f"{max(self.lrs):.3g}; PRepBN {plan}"
                    + (f"; resumed from {self.resumed_from} at step {self.meta['step']}" if self.resumed_from else ""))
        epoch = self.meta["step"] // self.steps_per_epoch
        while self.meta["step"] < self.total_steps:
            self.end_epoch(self.train_epoch(epoch))
            epoch += 1
        return self.finish()


def validate_lm_checkpoint(cfg, split="val", use_ema=False, reparam=False):
    """What validate.py reports for a language model: the perplexity of ``cfg.ckpt_path`` on the
    corpus split (``val`` or ``train``), the model rebuilt from the config (or the checkpoint's
    ``.config.json``)."""
    from ..checkpoint import load_checkpoint
    if split not in ("train", "val"):
        raise ConfigError(f"--split for a text corpus is train or val, got {split!r}")
    setup_context(cfg)
    from ..convert.hf import read_sidecar
    record = read_sidecar(cfg.ckpt_path)
    if record is not None and record["model"] == cfg.model:
        cfg = type(cfg)(cfg)
        cfg["model_kwargs"] = dict(record["overrides"], **cfg.model_kwargs)
    net = build_lm(cfg)
    load_checkpoint(net, cfg.ckpt_path, use_ema=use_ema)
    if reparam:
        from ..layers.reparam import reparameterize
        reparameterize(net)
    train, val, _, _ = load_text(cfg, net.config)
    stream = val if split == "val" else train
    net.set_train(False)
    ppl, nll, n = perplexity_of(stream.eval_batches(cfg.seq_length, cfg.batch_size), TokenNLL(net))
    return {"model": cfg.model, "checkpoint": cfg.ckpt_path, "ema": use_ema, "reparam": reparam, "split": split,
            "tokens": n,
            "loss": nll, "perplexity": ppl, "norm": net.config["norm"], "folded": net.config["folded"]}
