"""ImageFolder data through mindcv's create_dataset / create_transforms / create_loader, sharded by rank."""
import os

import mindspore.dataset as ds
from mindcv.data import create_dataset, create_loader, create_transforms

from .config import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def class_folders(path):
    """Sorted class-folder names of an ImageFolder split (the label order of ImageFolderDataset)."""
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


# Leading bytes of the formats the decoder reads.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def is_readable_image(path):
    """A cheap content check (two small reads, no decode): False for an empty or unreadable file,
    one that is no known image format, a JPEG without its end-of-image marker or a PNG without
    its IEND chunk (truncated downloads), or a WebP shorter than its RIFF header says."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 4096))
            tail = f.read()
    except OSError:
        return False
    if head.startswith(b"\xff\xd8\xff"):
        return b"\xff\xd9" in tail   # some writers pad after the marker
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"IEND" in tail[-64:]
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= size
    return head.startswith(_MAGIC)


def unreadable_images(path, classes):
    """Image files (by extension) under ``path/<class>/`` that fail :func:`is_readable_image`."""
    bad = []
    for c in classes:
        folder = os.path.join(path, c)
        bad += [os.path.join(folder, f) for f in sorted(os.listdir(folder))
                if f.lower().endswith(IMAGE_EXTENSIONS) and not is_readable_image(os.path.join(folder, f))]
    return bad


def check_image_folder(root, split, num_classes, max_bad_images=-1):
    """Class names of ``root/split`` after checking the tree; a clear ConfigError otherwise.

    With ``max_bad_images >= 0`` every image file is checked (:func:`is_readable_image`): more
    unreadable files than that is an error; fewer are logged and counted, and the pipeline is
    switched to replace the samples that fail to decode by valid ones (dropping them instead
    would give ranks different batch counts and hang a data-parallel run).
    Returns ``(classes, unreadable files)``.
    """
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
    if max_bad_images < 0:
        return classes, []
    bad = unreadable_images(path, classes)
    if len(bad) > max_bad_images:
        raise ConfigError(f"{path} has {len(bad)} unreadable image files, more than max_bad_images="
                          f"{max_bad_images}; e.g. {bad[0]}")
    if bad:
        ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    return classes, bad


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
