"""Every ImageNet config trains as upstream trains that model: it equals upstream's cfg
(github xinghaochen/SLAB, ``classification/cfgs/NAME.yaml``, same file name as ours) over the
defaults of ``classification/config.py``, key by key, and the trainer's learning-rate schedule
starts, peaks and ends at upstream's effective rates on the paper's 8 devices. No model is built."""
import math
import os

import pytest

from slab_ms.engine import data as data_lib
from slab_ms.engine.config import load_config
from slab_ms.engine.common import learning_rates

from conftest import ROOT

DEVICES = 8   # the paper's runs: torch.distributed.launch --nproc_per_node=8 main.py (upstream README)

# Upstream classification/config.py defaults, named by their upstream keys.
UPSTREAM_DEFAULTS = {
    "DATA.BATCH_SIZE": 128, "DATA.IMG_SIZE": 224, "DATA.INTERPOLATION": "bicubic",
    "MODEL.DROP_RATE": 0.0, "MODEL.DROP_PATH_RATE": 0.1, "MODEL.LABEL_SMOOTHING": 0.1,
    "TRAIN.EPOCHS": 300, "TRAIN.WARMUP_EPOCHS": 20, "TRAIN.COOLDOWN_EPOCHS": 0, "TRAIN.WEIGHT_DECAY": 0.05,
    "TRAIN.BASE_LR": 5e-4, "TRAIN.WARMUP_LR": 5e-7, "TRAIN.MIN_LR": 5e-6, "TRAIN.CLIP_GRAD": 5.0,
    "TRAIN.LR_SCHEDULER.NAME": "cosine", "TRAIN.OPTIMIZER.NAME": "adamw", "TRAIN.OPTIMIZER.EPS": 1e-8,
    "TRAIN.OPTIMIZER.BETAS": (0.9, 0.999),
    "AUG.COLOR_JITTER": 0.4, "AUG.AUTO_AUGMENT": "rand-m9-mstd0.5-inc1", "AUG.REPROB": 0.25, "AUG.REMODE": "pixel",
    "AUG.MIXUP": 0.8, "AUG.CUTMIX": 1.0, "AUG.MIXUP_PROB": 1.0, "AUG.MIXUP_SWITCH_PROB": 0.5, "AUG.MIXUP_MODE": "batch",
    "TEST.CROP": True,
}

# What each upstream cfg sets (written out by hand from classification/cfgs/<file>; CLIP_GRAD
# "None" in a cfg is None: yacs 0.1.8 literal-evaluates it, and main.py then skips clipping).
_PVT = {"TRAIN.WEIGHT_DECAY": 0.05, "TRAIN.EPOCHS": 300, "TRAIN.WARMUP_EPOCHS": 5, "TRAIN.COOLDOWN_EPOCHS": 10,
        "TRAIN.BASE_LR": 5e-4, "TRAIN.WARMUP_LR": 1e-6, "TRAIN.MIN_LR": 1e-5, "DATA.IMG_SIZE": 224}
_CSWIN = dict(_PVT, **{"TRAIN.WARMUP_EPOCHS": 20})
_DEIT = {"DATA.IMG_SIZE": 224, "MODEL.DROP_PATH_RATE": 0.0, "MODEL.DROP_RATE": 0.0}
UPSTREAM_CFGS = {   # upstream cfg file (= our configs/ file): (model, what the cfg sets)
    "slab_swin_t.yaml": ("slab_swin_tiny", {"MODEL.DROP_PATH_RATE": 0.2}),
    "slab_swin_s.yaml": ("slab_swin_small", {"MODEL.DROP_PATH_RATE": 0.3}),
    "slab_swin_b.yaml": ("slab_swin_base", {"MODEL.DROP_PATH_RATE": 0.5, "DATA.BATCH_SIZE": 64}),
    "swin_t_prepbn.yaml": ("swin_tiny_prepbn", {"MODEL.DROP_PATH_RATE": 0.1}),
    "deit_t_prepbn.yaml": ("deit_tiny_prepbn", _DEIT),
    "deit_s_prepbn.yaml": ("deit_small_prepbn", _DEIT),
    "slab_deit_t.yaml": ("slab_deit_tiny", _DEIT),
    "slab_deit_s.yaml": ("slab_deit_small", _DEIT),
    "pvt_t_prepbn.yaml": ("pvt_tiny_prepbn", dict(_PVT, **{"DATA.BATCH_SIZE": 128, "TRAIN.CLIP_GRAD": None,
                                                           "MODEL.DROP_PATH_RATE": 0.0})),
    "pvt_s_prepbn.yaml": ("pvt_small_prepbn", dict(_PVT, **{"DATA.BATCH_SIZE": 64, "TRAIN.CLIP_GRAD": None,
                                                            "MODEL.DROP_PATH_RATE": 0.1})),
    "pvt_m_prepbn.yaml": ("pvt_medium_prepbn", dict(_PVT, **{"DATA.BATCH_SIZE": 128, "TRAIN.CLIP_GRAD": 1.0,
                                                             "MODEL.DROP_PATH_RATE": 0.3})),
    "slab_pvt_t.yaml": ("slab_pvt_tiny", dict(_PVT, **{"DATA.BATCH_SIZE": 128, "TRAIN.CLIP_GRAD": None,
                                                       "MODEL.DROP_PATH_RATE": 0.0})),
    "slab_pvt_s.yaml": ("slab_pvt_small", dict(_PVT, **{"DATA.BATCH_SIZE": 64, "TRAIN.CLIP_GRAD": None,
                                                        "MODEL.DROP_PATH_RATE": 0.1})),
    "slab_pvt_m.yaml": ("slab_pvt_medium", dict(_PVT, **{"DATA.BATCH_SIZE": 64, "TRAIN.CLIP_GRAD": 1.0,
                                                         "MODEL.DROP_PATH_RATE": 0.3})),
    "slab_cswin_t.yaml": ("slab_cswin_tiny", dict(_CSWIN, **{"DATA.BATCH_SIZE": 256, "TRAIN.CLIP_GRAD": None,
                                                             "MODEL.DROP_PATH_RATE": 0.1})),
    "slab_cswin_s.yaml": ("slab_cswin_small", dict(_CSWIN, **{"DATA.BATCH_SIZE": 128, "TRAIN.CLIP_GRAD": None,
                                                              "MODEL.DROP_PATH_RATE": 0.3})),
}


def upstream(cfg_file):
    model, sets = UPSTREAM_CFGS[cfg_file]
    return model, dict(UPSTREAM_DEFAULTS, **sets)


def ours(cfg_file):
    return load_config(os.path.join(ROOT, "configs", cfg_file))


def test_every_imagenet_config_has_an_upstream_row():
    """An ImageNet config: a full-size registered model (no model_kwargs) with 1000 classes; the
    small digits configs are not upstream recipes, and the LLaMA configs train on text."""
    files = {f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".yaml")}
    imagenet = {f for f, cfg in ((f, ours(f)) for f in files)
                if cfg.num_classes == 1000 and not cfg.model_kwargs and cfg.dataset != "text"}
    assert imagenet == set(UPSTREAM_CFGS)


@pytest.mark.parametrize("cfg_file", sorted(UPSTREAM_CFGS))
def test_config_equals_its_upstream_cfg(cfg_file):
    model, up = upstream(cfg_file)
    cfg = ours(cfg_file)
    clip = up["TRAIN.CLIP_GRAD"]
    got = {
        "model": cfg.model,
        "DATA.BATCH_SIZE": cfg.batch_size * cfg.gradient_accumulation_steps,
        "DATA.IMG_SIZE": cfg.image_resize,
        "DATA.INTERPOLATION": cfg.interpolation,
        "TEST.CROP": cfg.crop_pct == pytest.approx(224 / 256),   # upstream: resize to 256/224 x, centre crop
        "MODEL.DROP_RATE": cfg.drop_rate,
        "MODEL.DROP_PATH_RATE": cfg.drop_path_rate,
        "MODEL.LABEL_SMOOTHING": cfg.label_smoothing,
        # main.py loops over EPOCHS + COOLDOWN_EPOCHS; its cosine (lr_scheduler.py) lasts EPOCHS
        "TRAIN.EPOCHS": cfg.decay_epochs if cfg.decay_epochs is not None else cfg.epoch_size,
        "TRAIN.COOLDOWN_EPOCHS": cfg.epoch_size - up["TRAIN.EPOCHS"],
        "TRAIN.WARMUP_EPOCHS": cfg.warmup_epochs,
        "TRAIN.WEIGHT_DECAY": cfg.weight_decay,
        "TRAIN.BASE_LR": cfg.lr,
        "TRAIN.WARMUP_LR": pytest.approx(cfg.lr * cfg.warmup_factor, rel=1e-12),
        "TRAIN.MIN_LR": cfg.min_lr,
        "TRAIN.CLIP_GRAD": cfg.clip_value if cfg.clip_grad else None,
        "TRAIN.LR_SCHEDULER.NAME": cfg.scheduler,   # ours: "cosine" is upstream's timm cosine
        "TRAIN.OPTIMIZER.NAME": cfg.opt,
        "TRAIN.OPTIMIZER.EPS": cfg.eps,
        "TRAIN.OPTIMIZER.BETAS": (cfg.beta1, cfg.beta2),
        "AUG.COLOR_JITTER": cfg.color_jitter,
        # mindcv spells timm's RandAugment "rand-..." as "randaug-..."
        "AUG.AUTO_AUGMENT": cfg.auto_augment.replace("randaug-", "rand-", 1),
        "AUG.REPROB": cfg.re_prob,
        "AUG.REMODE": {"random": "pixel"}.get(cfg.re_value, cfg.re_value),   # per-pixel normal noise
        "AUG.MIXUP": cfg.mixup,
        "AUG.CUTMIX": cfg.cutmix,
        "AUG.MIXUP_PROB": cfg.cutmix_prob,
    }
    want = {k: up[k] for k in got if k != "model"}
    want["model"] = model
    want["TEST.CROP"] = True
    assert got == want
    assert cfg.lr_base_batch == 512 and cfg.loss == "CE" and not cfg.ema   # main.py: no EMA
    assert cfg.clip_grad == (clip is not None)


def timm_cosine(t, t_initial, lr_min, base, warmup_t, warmup_lr_init):
    """timm's CosineLRScheduler (t_mul 1, cycle_limit 1, warmup_prefix False, no noise) at step t,
    as upstream lr_scheduler.py builds it: written from timm's formula, not from the trainer."""
    if t < warmup_t:
        return warmup_lr_init + t * (base - warmup_lr_init) / warmup_t
    if t >= t_initial:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t / t_initial))


@pytest.mark.parametrize("cfg_file", sorted(UPSTREAM_CFGS))
def test_effective_learning_rates_at_the_papers_batch(cfg_file):
    """upstream main.py: BASE_LR, WARMUP_LR and MIN_LR all x BATCH_SIZE x 8 / 512; lr_scheduler.py:
    timm's cosine over EPOCHS x steps counted from step 0, linear warm-up from WARMUP_LR over its
    first WARMUP_EPOCHS, MIN_LR after it for the COOLDOWN_EPOCHS main.py still trains. Every step
    of the trainer's schedule equals it."""
    _, up = upstream(cfg_file)
    cfg = ours(cfg_file)
    scale = up["DATA.BATCH_SIZE"] * DEVICES / 512
    spe = 8   # optimizer steps per epoch: small, so the schedule is cheap
    lrs = learning_rates(cfg, spe, cfg.batch_size * cfg.gradient_accumulation_steps * DEVICES)
    epochs, warm, cool = up["TRAIN.EPOCHS"], up["TRAIN.WARMUP_EPOCHS"], up["TRAIN.COOLDOWN_EPOCHS"]
    want = [timm_cosine(t, epochs * spe, up["TRAIN.MIN_LR"] * scale, up["TRAIN.BASE_LR"] * scale, warm * spe,
                        up["TRAIN.WARMUP_LR"] * scale) for t in range((epochs + cool) * spe)]
    assert lrs == pytest.approx(want, rel=1e-9, abs=0)
    assert lrs[0] == pytest.approx(up["TRAIN.WARMUP_LR"] * scale, rel=1e-9)          # warm-up start
    assert lrs[-1] == pytest.approx(up["TRAIN.MIN_LR"] * scale, rel=1e-3)            # the end


def test_mixup_cutmix_switch_like_upstream(monkeypatch):
    """The training loader mixes every batch (MIXUP_PROB 1.0), with mixup alpha 0.8 or cutmix alpha
    1.0 switched with probability 0.5 per batch (MIXUP_SWITCH_PROB, MIXUP_MODE 'batch'); label
    smoothing 0.1 is applied once, by the loss (mindcv's Mixup gets 0). The pipeline is built, not run."""
    import numpy as np
    import mindspore.dataset as ds
    from mindcv.data import loader as mindcv_loader

    made = []

    class RecordingMixup(mindcv_loader.Mixup):
        def __init__(self, **kw):
            super().__init__(**kw)
            made.append(self)

    monkeypatch.setattr(mindcv_loader, "Mixup", RecordingMixup)
    monkeypatch.setattr(data_lib, "create_dataset", lambda **kw: ds.NumpySlicesDataset(
        {"image": np.zeros((4, 8), np.uint8), "label": np.zeros(4, np.int32)}, shuffle=False))
    _, up = upstream("slab_swin_t.yaml")
    cfg = ours("slab_swin_t.yaml")
    cfg.num_parallel_workers = 1   # this machine's cores, not the config's 8
    seed, errors = ds.config.get_seed(), ds.config.get_error_samples_mode()   # train_loader sets both
    try:
        data_lib.train_loader(cfg)
    finally:
        ds.config.set_seed(seed)
        ds.config.set_error_samples_mode(errors)
    (mix,) = made
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob, mix.mode) == (
        up["AUG.MIXUP"], up["AUG.CUTMIX"], up["AUG.MIXUP_PROB"], up["AUG.MIXUP_SWITCH_PROB"], up["AUG.MIXUP_MODE"])
    assert mix.label_smoothing == 0.0 and cfg.label_smoothing == up["MODEL.LABEL_SMOOTHING"]
