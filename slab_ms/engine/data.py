"""ImageFolder data through mindcv's create_dataset / create_transforms / create_loader, sharded by rank."""
import os

import mindspore.dataset as ds
from mindcv.data import create_dataset, create_loader, create_transforms

from .config import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def class_folders(path):
    """Sorted class-folder names of an ImageFolder split (the label order of ImageFolderDataset)."""
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def check_image_folder(root, split, num_classes):
    """Class names of ``root/split`` after checking the tree; a clear ConfigError otherwise."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise ConfigError(f"data directory {path} not found (data_dir={root!r}, split={split!r})")
    classes = class_folders(path)
    if not classes:
        raise ConfigError(f"{path} has no class folders (expected {path}/<class>/<image>)")
    for c in classes:
        if not any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(os.path.join(path, c))):
            raise ConfigError(f"class folder {os.path.join(path, c)} holds no images")
    if num_classes != len(classes):
        raise ConfigError(f"num_classes is {num_classes} but {path} has {len(classes)} class folders")
    return classes


def train_transforms(cfg):
    return create_transforms(
        dataset_name="imagenet", image_resize=cfg.image_resize, is_training=True, auto_augment=cfg.auto_augment,
        scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, vflip=cfg.vflip,
        color_jitter=cfg.color_jitter or None, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
        re_prob=cfg.re_prob, re_scale=tuple(cfg.re_scale), re_ratio=tuple(cfg.re_ratio), re_value=cfg.re_value,
        re_max_attempts=cfg.re_max_attempts)


def eval_transforms(cfg):
    """The evaluation preprocessing (resize to image_resize / crop_pct, centre crop, normalise)."""
    return create_transforms(dataset_name="imagenet", image_resize=cfg.image_resize, is_training=False,
                             crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)


def train_loader(cfg, rank=0, world=1, epoch=0, mixup=True, augment=True):
    """Batches of this rank's shard of the training split; the shuffle depends on (seed, epoch) only,
    so a resumed run sees the same order as an uninterrupted one."""
    ds.config.set_seed(cfg.seed + epoch)
    dataset = create_dataset(name="imagenet", root=cfg.data_dir, split=cfg.train_split, shuffle=cfg.shuffle,
                             num_samples=cfg.num_samples, num_shards=world if world > 1 else None,
                             shard_id=rank if world > 1 else None, num_parallel_workers=cfg.num_parallel_workers)
    use_mix = mixup and (cfg.mixup > 0 or cfg.cutmix > 0)
    return create_loader(dataset, batch_size=cfg.batch_size, drop_remainder=cfg.drop_remainder, is_training=use_mix,
                         mixup=cfg.mixup, cutmix=cfg.cutmix, cutmix_prob=cfg.cutmix_prob,
                         num_classes=cfg.num_classes,
                         transform=train_transforms(cfg) if augment else eval_transforms(cfg),
                         num_parallel_workers=cfg.num_parallel_workers)


def eval_loader(cfg, split=None, rank=0, world=1, batch_size=None):
    """Batches of ``split`` (default val_split), in file order, sharded when ``world > 1``."""
    dataset = create_dataset(name="imagenet", root=cfg.data_dir, split=split or cfg.val_split, shuffle=False,
                             num_shards=world if world > 1 else None, shard_id=rank if world > 1 else None,
                             num_parallel_workers=cfg.num_parallel_workers)
    return create_loader(dataset, batch_size=batch_size or cfg.batch_size, drop_remainder=False, is_training=False,
                         num_classes=cfg.num_classes, transform=eval_transforms(cfg),
                         num_parallel_workers=cfg.num_parallel_workers)
