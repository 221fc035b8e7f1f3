"""ImageFolder data through mindcv's create_dataset / create_transforms / create_loader, sharded by rank.

Images are decoded by :class:`ImageDecoder` (Pillow) rather than MindSpore's ``Decode``: on
MindSpore 2.10 a JPEG with a damaged Huffman table or header kills the process with a
segmentation fault inside ``Decode`` / ``RandomCropDecodeResize`` (``bench/bench_data.py``
reproduces it), where Pillow raises. A file that fails to decode is counted and the pipeline
replaces it by a healthy sample (ErrorSamplesMode.REPLACE).
"""
import hashlib
import io
import os
import threading

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
import numpy as np
from mindcv.data import create_dataset, create_loader, create_transforms
from mindspore.dataset.vision import Inter
from PIL import Image

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


class ImageDecoder:
    """The pipeline's decode step: encoded bytes -> HWC uint8 RGB, with Pillow.

    Only the formats of :data:`IMAGE_EXTENSIONS` (and GIF) are opened, so no other Pillow plugin
    (EPS, which runs Ghostscript, among them) ever parses a file. Pillow's decompression-bomb
    limit stays on. A file that cannot be decoded is recorded by content (SHA-1) and raised as
    ValueError; with ErrorSamplesMode.REPLACE (set by the loaders) the pipeline then uses a
    healthy sample in its place, so every rank keeps its batch count. The pipeline runs Python
    operations in threads of this process (python_multiprocessing is off), so the record is
    shared. ``len(decoder)`` is the number of distinct bad files seen, including those the
    start-up content check rejected (:meth:`add_files`).
    """
    FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

    def __init__(self, split_path=None):
        self.split_path = split_path
        self._lock = threading.Lock()
        self._bad = {}        # sha1 -> [size, error, path or None, reported]

    def __call__(self, raw):
        data = raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)
        try:
            with Image.open(io.BytesIO(data), formats=self.FORMATS) as im:
                rgb = im.convert("RGB")   # decodes, whatever the mode
            return np.asarray(rgb)
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            with self._lock:
                self._bad.setdefault(hashlib.sha1(data).hexdigest(), [len(data), why, None, False])
            raise ValueError(f"cannot decode image ({len(data)} bytes): {why}") from None

    def add_files(self, paths, why="failed the start-up content check"):
        """Record files already known to be bad (found before the pipeline runs)."""
        for p in paths:
            try:
                with open(p, "rb") as f:
                    data = f.read()
                key, size = hashlib.sha1(data).hexdigest(), len(data)
            except OSError as e:
                key, size, why = f"unreadable:{p}", -1, f"{type(e).__name__}: {e.strerror}"
            with self._lock:
                self._bad.setdefault(key, [size, why, p, False])

    def __len__(self):
        with self._lock:
            return len(self._bad)

    def _resolve(self):
        """Find the paths of decode failures under ``split_path``, by size, then content (one walk
        per batch of new failures; a file not found is not looked for again)."""
        with self._lock:
            open_ = {k: v for k, v in self._bad.items() if v[2] is None}
        sizes = {v[0] for v in open_.values()}
        if not sizes or not self.split_path:
            return
        for c in class_folders(self.split_path):
            with os.scandir(os.path.join(self.split_path, c)) as it:
                for entry in it:
                    try:
                        if entry.is_file() and entry.stat().st_size in sizes:
                            with open(entry.path, "rb") as f:
                                key = hashlib.sha1(f.read()).hexdigest()
                            if key in open_:
                                with self._lock:
                                    open_[key][2] = entry.path
                    except OSError:
                        continue
        with self._lock:
            for v in open_.values():
                if v[2] is None:
                    v[2] = ""   # looked for and not found: no second walk for it

    def new_failures(self):
        """``[(path, error)]`` of the bad files not returned before (path ``"?"`` if the file is gone)."""
        self._resolve()
        with self._lock:
            fresh = [v for v in self._bad.values() if not v[3]]
            for v in fresh:
                v[3] = True
        return [(v[2] or "?", v[1]) for v in fresh]

    def check_limit(self, limit, split):
        """A ConfigError when more than ``limit`` (>= 0) distinct files of ``split`` are bad."""
        n = len(self)
        if 0 <= limit < n:
            self._resolve()
            with self._lock:
                known = [f"{v[2]} ({v[1]})" for v in self._bad.values() if v[2]]
            raise ConfigError(f"{n} image files in {split}/ cannot be read or decoded, more than max_bad_images="
                              f"{limit}" + (f"; e.g. {known[-1]}" if known else ""))


def check_image_folder(root, split, num_classes, max_bad_images=-1):
    """Class names of ``root/split`` after checking the tree; a clear ConfigError otherwise.

    With ``max_bad_images >= 0`` every image file is checked by content first
    (:func:`is_readable_image`, two small reads, no decode): more unreadable files than that is
    an error before anything runs. Files that pass but fail to decode are caught later, by
    :class:`ImageDecoder`. Returns ``(classes, decoder)``: the split's decoder, which already
    holds the unreadable files.
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
    decoder = ImageDecoder(path)
    if max_bad_images < 0:
        return classes, decoder
    bad = unreadable_images(path, classes)
    if len(bad) > max_bad_images:
        raise ConfigError(f"{path} has {len(bad)} unreadable image files, more than max_bad_images="
                          f"{max_bad_images}; e.g. {bad[0]}")
    decoder.add_files(bad)
    return classes, decoder


def _interpolation(name):
    return getattr(Inter, name.upper(), Inter.BILINEAR)   # as mindcv's create_transforms maps it


def train_transforms(cfg, decoder=None):
    """mindcv's ImageNet training transforms, with its fused RandomCropDecodeResize split into
    :class:`ImageDecoder` and RandomResizedCrop (same crop draws; identical output on PNG)."""
    ops = create_transforms(
        dataset_name="imagenet", image_resize=cfg.image_resize, is_training=True, auto_augment=cfg.auto_augment,
        scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, vflip=cfg.vflip,
        color_jitter=cfg.color_jitter or None, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std,
        re_prob=cfg.re_prob, re_scale=tuple(cfg.re_scale), re_ratio=tuple(cfg.re_ratio), re_value=cfg.re_value,
        re_max_attempts=cfg.re_max_attempts)
    if cfg.image_decoder == "mindspore":
        return ops
    if not isinstance(ops[0], vision.RandomCropDecodeResize):
        raise RuntimeError(f"mindcv's training transforms start with {type(ops[0]).__name__}, "
                           "expected RandomCropDecodeResize")
    crop = vision.RandomResizedCrop(size=cfg.image_resize, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                                    interpolation=_interpolation(cfg.interpolation))
    return [decoder or ImageDecoder(), crop] + ops[1:]


def eval_transforms(cfg, decoder=None):
    """The evaluation preprocessing (decode, resize to image_resize / crop_pct, centre crop, normalise)."""
    ops = create_transforms(dataset_name="imagenet", image_resize=cfg.image_resize, is_training=False,
                            crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    if cfg.image_decoder == "mindspore":
        return ops
    if not isinstance(ops[0], vision.Decode):
        raise RuntimeError(f"mindcv's evaluation transforms start with {type(ops[0]).__name__}, expected Decode")
    return [decoder if decoder is not None else ImageDecoder()] + ops[1:]


def train_loader(cfg, rank=0, world=1, epoch=0, mixup=True, augment=True, decoder=None):
    """Batches of this rank's shard of the training split; the shuffle depends on (seed, epoch) only,
    so a resumed run sees the same order as an uninterrupted one. ``decoder`` (an
    :class:`ImageDecoder`) records the files that fail to decode."""
    ds.config.set_seed(cfg.seed + epoch)
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    dataset = create_dataset(name="imagenet", root=cfg.data_dir, split=cfg.train_split, shuffle=cfg.shuffle,
                             num_samples=cfg.num_samples, num_shards=world if world > 1 else None,
                             shard_id=rank if world > 1 else None, num_parallel_workers=cfg.num_parallel_workers)
    use_mix = mixup and (cfg.mixup > 0 or cfg.cutmix > 0)
    return create_loader(dataset, batch_size=cfg.batch_size, drop_remainder=cfg.drop_remainder, is_training=use_mix,
                         mixup=cfg.mixup, cutmix=cfg.cutmix, cutmix_prob=cfg.cutmix_prob,
                         num_classes=cfg.num_classes,
                         transform=train_transforms(cfg, decoder) if augment else eval_transforms(cfg, decoder),
                         num_parallel_workers=cfg.num_parallel_workers, python_multiprocessing=False)


def eval_loader(cfg, split=None, rank=0, world=1, batch_size=None, decoder=None):
    """Batches of ``split`` (default val_split), in file order, sharded when ``world > 1``."""
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    dataset = create_dataset(name="imagenet", root=cfg.data_dir, split=split or cfg.val_split, shuffle=False,
                             num_shards=world if world > 1 else None, shard_id=rank if world > 1 else None,
                             num_parallel_workers=cfg.num_parallel_workers)
    return create_loader(dataset, batch_size=batch_size or cfg.batch_size, drop_remainder=False, is_training=False,
                         num_classes=cfg.num_classes, transform=eval_transforms(cfg, decoder),
                         num_parallel_workers=cfg.num_parallel_workers, python_multiprocessing=False)
