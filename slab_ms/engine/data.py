"""ImageFolder data through mindcv's create_dataset / create_transforms / create_loader, sharded by rank.

Images are decoded by :class:`ImageDecoder` (Pillow) rather than MindSpore's ``Decode``: on
MindSpore 2.10 a JPEG with a damaged Huffman table or header kills the process with a
segmentation fault inside ``Decode`` / ``RandomCropDecodeResize`` (``bench/bench_data.py``
reproduces it), where Pillow raises. A file that fails to decode is counted; training replaces
it by a healthy sample (ErrorSamplesMode.REPLACE, so every rank keeps its batch count) and
evaluation drops it (never a duplicate in the counts).

Start-up (:func:`check_image_folder`) checks each file's bytes cheaply. Each rank checks only
its share of the files, and the result is cached next to the data, keyed by the files' names,
sizes and times, so a second start costs a directory listing and one ``stat`` per file of the
share (``bench/bench_startup.py``).
"""
import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
import threading
import weakref

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
import numpy as np
from mindcv.data import create_dataset, create_loader, create_transforms
from mindspore.dataset.vision import Inter
from PIL import Image

from .._env import cache_dir
from ..io import atomic_write
from ..errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def class_folders(path):
    """Sorted class-folder names of an ImageFolder split (the label order of ImageFolderDataset)."""
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def image_files(path, classes):
    """``{class: sorted image file names}`` of an ImageFolder split: one listing per class folder."""
    return {c: sorted(f for f in os.listdir(os.path.join(path, c)) if f.lower().endswith(IMAGE_EXTENSIONS))
            for c in classes}


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
    """Image files (by extension) under ``path/<class>/`` that fail :func:`is_readable_image`
    (every file, no cache; :func:`check_image_folder` checks a rank's share, cached)."""
    return [os.path.join(path, c, f) for c, names in image_files(path, classes).items() for f in names
            if not is_readable_image(os.path.join(path, c, f))]


# ----------------------------------------------------------------------------- start-up content check
# Bump when is_readable_image changes what it accepts: cached results of the old check then no longer apply.
CONTENT_CHECK_VERSION = 1
CONTENT_CHECK_CACHE = ".slab_ms_content_check"   # + ".<rank>-of-<world>.json", in the split folder
_MAX_CACHE_BYTES = 16 << 20   # ImageNet's cache is ~100 kB per rank; anything far larger is not ours


def content_check_share(names, folder_index, rank=0, world=1):
    """The files of one class folder (sorted ``names``, the ``folder_index``-th folder) that rank
    ``rank`` of ``world`` checks at start-up: every world-th file. The offset turns with the folder,
    so the remainders spread over the ranks; shares are per folder, so a change in one folder
    leaves the other folders' cached results valid."""
    return names[(rank - folder_index) % world::world]


def _fingerprint(folder, names):
    """SHA-1 over each file's name, size, mtime and ctime: a file added, removed, rewritten or
    replaced (ctime changes even where a copy keeps the mtime) gives another fingerprint."""
    parts = []
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)   # stat by name in the folder: ~35% faster
    except OSError:
        fd = None
    try:
        for n in names:
            try:
                st = os.stat(n, dir_fd=fd) if fd is not None else os.stat(os.path.join(folder, n))
                parts.append(f"{n}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n")
            except OSError:
                parts.append(f"{n}\0gone\n")
    finally:
        if fd is not None:
            os.close(fd)
    return hashlib.sha1("".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def content_check_cache_files(path, rank=0, world=1):
    """Where the content check of ``path`` (a split folder) is cached, in the order tried: a file
    in the split folder, else (folder not writable) one under ``$XDG_CACHE_HOME/slab_ms`` or
    ``~/.cache/slab_ms`` named by the folder's real path."""
    name = f"{rank}-of-{world}.json"
    tag = hashlib.sha1(os.path.realpath(path).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return [os.path.join(path, f"{CONTENT_CHECK_CACHE}.{name}"),
            cache_dir("content_check", f"{tag}.{name}")]


def _read_cache(file, rank, world):
    """The ``folders`` of a cache file, or ``{}`` when it is missing, not a regular file (a FIFO
    must not block, a link is not followed), too large, not JSON, or not of this shape. JSON only,
    never unpickled; each entry is checked again where it is used."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_CACHE_BYTES:
                return {}
            data = json.loads(f.read(_MAX_CACHE_BYTES + 1))
    except (OSError, ValueError, RecursionError):
        return {}
    if not (isinstance(data, dict) and data.get("version") == CONTENT_CHECK_VERSION and data.get("rank") == rank
            and data.get("world") == world and isinstance(data.get("folders"), dict)):
        return {}
    return data["folders"]


def _write_cache(files, rank, world, folders):
    """Write the cache atomically (a temporary file in the same folder, then a rename) to the first
    of ``files`` that can be written; returns that path, or None (no error: caching is optional).
    A place where something other than a regular file sits (a link, a FIFO) is left alone."""
    blob = json.dumps({"version": CONTENT_CHECK_VERSION, "rank": rank, "world": world, "folders": folders},
                      separators=(",", ":")).encode()
    for file in files:
        try:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISREG(os.lstat(file).st_mode):
                    continue
            os.makedirs(os.path.dirname(file), exist_ok=True)
            with atomic_write(file, prefix=os.path.basename(file) + ".") as tmp, open(tmp, "wb") as f:
                f.write(blob)
            return file
        except OSError:
            continue   # atomic_write removed its temporary file
    return None


def unreadable_images_in_share(path, files, rank=0, world=1, cache=True):
    """Paths of the files of rank ``rank``'s share (:func:`content_check_share`) that fail
    :func:`is_readable_image`; ``files`` is :func:`image_files` of the split folder ``path``.

    With ``cache``, a class folder whose share has the fingerprint of the cached result (same
    names, sizes, mtimes, ctimes) is not read again; the others are checked and the cache is
    rewritten (:func:`content_check_cache_files`). A cache entry is used only when its
    fingerprint matches and the bad files it names are files of the share.
    """
    cache_files = content_check_cache_files(path, rank, world) if cache else []
    cached = {}
    for f in cache_files:
        cached = _read_cache(f, rank, world)
        if cached:
            break
    folders, bad, changed = {}, [], not cached
    for k, (c, names) in enumerate(files.items()):
        share = content_check_share(names, k, rank, world)
        folder = os.path.join(path, c)
        key = _fingerprint(folder, share) if cache else None
        entry = cached.get(c)
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("bad"), list) \
                and all(isinstance(n, str) for n in entry["bad"]) and set(entry["bad"]) <= set(share):
            found = entry["bad"]
        else:
            found = [n for n in share if not is_readable_image(os.path.join(folder, n))]
            changed = True
        folders[c] = {"key": key, "bad": found}
        bad += [os.path.join(folder, n) for n in found]
    if cache and (changed or set(cached) != set(folders)):
        _write_cache(cache_files, rank, world, folders)
    return bad


# ----------------------------------------------------------------------------- decoding
def _remove_own_file(path, pid):
    if os.getpid() == pid:   # never from a forked worker, never a file this process did not create
        with contextlib.suppress(OSError):
            os.unlink(path)


class ImageDecoder:
    """The pipeline's decode step: encoded bytes -> HWC uint8 RGB, with Pillow.

    Only the formats of :data:`IMAGE_EXTENSIONS` (and GIF) are opened, so no other Pillow plugin
    (EPS, which runs Ghostscript, among them) ever parses a file. Pillow's decompression-bomb
    limit stays on. A file that cannot be decoded is recorded by content (SHA-1) and raised as
    ValueError: training (ErrorSamplesMode.REPLACE) then uses a healthy sample in its place, so
    every rank keeps its batch count; evaluation decodes with :meth:`decode_or_empty` and drops
    the file. ``len(decoder)`` is the number of distinct bad files seen, including those the
    start-up content check rejected (:meth:`add_files`).

    Python operations run in threads of this process by default, which share the record. With
    ``python_multiprocessing`` the loaders call :meth:`share_with_workers` first: worker processes
    then append each failure to a file this process created and reads back.
    """
    FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

    def __init__(self, split_path=None):
        self.split_path = split_path
        self._lock = threading.Lock()
        self._bad = {}        # sha1 -> [size, error, path or None, reported]
        self._log = None      # failures written by worker processes (share_with_workers)
        self._log_pid = None
        self._log_read = 0

    def __getstate__(self):   # picklable for the "spawn" start method: a lock is not
        state = dict(self.__dict__)
        state.pop("_lock")
        state.pop("_finalizer", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def share_with_workers(self):
        """Record failures in worker processes too: each appends a line to a file of this process
        (removed when the decoder is collected or the process exits). Call before the pipeline's
        workers start; idempotent. Returns the decoder."""
        if self._log is None:
            fd, self._log = tempfile.mkstemp(prefix="slab_ms_decode_failures_", suffix=".jsonl")
            os.close(fd)
            self._log_pid = os.getpid()
            self._finalizer = weakref.finalize(self, _remove_own_file, self._log, self._log_pid)
        return self

    def __call__(self, raw):
        data = raw.tobytes() if isinstance(raw, np.ndarray) else bytes(raw)
        try:
            with Image.open(io.BytesIO(data), formats=self.FORMATS) as im:
                return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))   # decodes, whatever the mode
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            key = hashlib.sha1(data).hexdigest()
            with self._lock:
                self._bad.setdefault(key, [len(data), why, None, False])
            if self._log is not None and os.getpid() != self._log_pid:
                self._append(key, len(data), why)
            raise ValueError(f"cannot decode image ({len(data)} bytes): {why}") from None

    def decode_or_empty(self, raw):
        """The evaluation decode step: the image, or for a file that cannot be decoded (recorded as
        by calling the decoder) an empty 0x0x3 image, which :func:`eval_loader` filters out."""
        try:
            return self(raw)
        except ValueError:
            return np.zeros((0, 0, 3), np.uint8)

    def _append(self, key, size, why):
        """One line per failure, written with O_APPEND in a single write (atomic between workers)."""
        line = (json.dumps([key, size, why]) + "\n").encode()
        with contextlib.suppress(OSError):
            fd = os.open(self._log, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def _sync(self):
        """Merge the failures that worker processes appended since the last call."""
        if self._log is None or os.getpid() != self._log_pid:
            return
        with self._lock:
            try:
                with open(self._log, "rb") as f:
                    f.seek(self._log_read)
                    chunk = f.read()
            except OSError:
                return
            end = chunk.rfind(b"\n") + 1   # a line still being written is read next time
            self._log_read += end
            for line in chunk[:end].splitlines():
                try:
                    key, size, why = json.loads(line)
                    self._bad.setdefault(str(key), [int(size), str(why), None, False])
                except (ValueError, TypeError):
                    continue

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
        self._sync()
        with self._lock:
            return len(self._bad)

    def _resolve(self):
        """Find the paths of decode failures under ``split_path``, by size, then content (one walk
        per batch of new failures; a file not found is not looked for again)."""
        self._sync()
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


def check_image_folder(root, split, num_classes, max_bad_images=-1, *, rank=0, world=1, cache=True):
    """Class names of ``root/split`` after checking the tree; a clear ConfigError otherwise.

    With ``max_bad_images >= 0`` the files of this rank's share (every world-th file of each class
    folder, :func:`content_check_share`) are checked by content first (:func:`is_readable_image`,
    two small reads, no decode): more unreadable files than that is an error before anything
    runs. In data parallel each rank so checks, reports and limits about 1/world of the files, as
    it limits what its own shard decodes. With ``cache`` the result is kept next to the data
    (:func:`unreadable_images_in_share`): a second start only lists and stats the files. Files
    that pass but fail to decode are caught later, by :class:`ImageDecoder`. Returns
    ``(classes, decoder)``: the split's decoder, which already holds the unreadable files found.
    """
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise ConfigError(f"data directory {path} not found (data_dir={root!r}, split={split!r})")
    if not (world >= 1 and 0 <= rank < world):
        raise ValueError(f"rank {rank} is not one of world {world}")
    classes = class_folders(path)
    if not classes:
        raise ConfigError(f"{path} has no class folders (expected {path}/<class>/<image>)")
    files = image_files(path, classes)
    for c, names in files.items():
        if not names:
            raise ConfigError(f"class folder {os.path.join(path, c)} holds no images")
    if num_classes != len(classes):
        raise ConfigError(f"num_classes is {num_classes} but {path} has {len(classes)} class folders")
    decoder = ImageDecoder(path)
    if max_bad_images < 0:
        return classes, decoder
    bad = unreadable_images_in_share(path, files, rank, world, cache)
    if len(bad) > max_bad_images:
        where = f" in the share of rank {rank} (1/{world} of its files)" if world > 1 else ""
        raise ConfigError(f"{path} has {len(bad)} unreadable image files{where}, more than max_bad_images="
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
    return [decoder if decoder is not None else ImageDecoder(), crop] + ops[1:]   # (an empty decoder is falsy)


def eval_transforms(cfg, decoder=None):
    """The evaluation preprocessing (decode, resize to image_resize / crop_pct, centre crop, normalise)."""
    ops = create_transforms(dataset_name="imagenet", image_resize=cfg.image_resize, is_training=False,
                            crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    if cfg.image_decoder == "mindspore":
        return ops
    if not isinstance(ops[0], vision.Decode):
        raise RuntimeError(f"mindcv's evaluation transforms start with {type(ops[0]).__name__}, expected Decode")
    return [decoder if decoder is not None else ImageDecoder()] + ops[1:]


def parallel_workers(cfg):
    """``num_parallel_workers``, at most the CPU count (MindSpore refuses more; the shipped
    ImageNet configs ask for 8)."""
    return max(1, min(cfg.num_parallel_workers, os.cpu_count() or 1))


def use_processes(cfg, python_multiprocessing=None):
    """Whether the loaders run the Python operations in worker processes (True) or threads (False):
    the argument when given, else the config's ``python_multiprocessing`` (default off)."""
    if python_multiprocessing is not None:
        return bool(python_multiprocessing)
    return bool(cfg.get("python_multiprocessing", False))


def train_loader(cfg, rank=0, world=1, epoch=0, mixup=True, augment=True, decoder=None, python_multiprocessing=None):
    """Batches of this rank's shard of the training split; the shuffle depends on (seed, epoch) only,
    so a resumed run sees the same order as an uninterrupted one. ``decoder`` (an
    :class:`ImageDecoder`) records the files that fail to decode, also in worker processes
    (``python_multiprocessing``, see :func:`use_processes`); iterate with :func:`train_batches`."""
    processes = use_processes(cfg, python_multiprocessing)
    decoder = decoder if decoder is not None else ImageDecoder()
    if processes:
        decoder.share_with_workers()
    ds.config.set_seed(cfg.seed + epoch)
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)   # for callers iterating it directly
    dataset = create_dataset(name="imagenet", root=cfg.data_dir, split=cfg.train_split, shuffle=cfg.shuffle,
                             num_samples=cfg.num_samples, num_shards=world if world > 1 else None,
                             shard_id=rank if world > 1 else None, num_parallel_workers=parallel_workers(cfg))
    use_mix = mixup and (cfg.mixup > 0 or cfg.cutmix > 0)
    return create_loader(dataset, batch_size=cfg.batch_size, drop_remainder=cfg.drop_remainder, is_training=use_mix,
                         mixup=cfg.mixup, cutmix=cfg.cutmix, cutmix_prob=cfg.cutmix_prob,
                         num_classes=cfg.num_classes,
                         transform=train_transforms(cfg, decoder) if augment else eval_transforms(cfg, decoder),
                         num_parallel_workers=parallel_workers(cfg), python_multiprocessing=processes)


def _decoded(image):
    return image.size > 0


def eval_loader(cfg, split=None, rank=0, world=1, batch_size=None, decoder=None, python_multiprocessing=None):
    """Batches of ``split`` (default val_split), in file order, sharded when ``world > 1``.

    A file that cannot be decoded is recorded by ``decoder`` and left out (never replaced by
    another image, so the counts are over the good files only): the decode step gives it an empty
    image (:meth:`ImageDecoder.decode_or_empty`) and a filter drops it before batching, whatever
    the global ErrorSamplesMode is. Evaluation always decodes with Pillow, also with
    ``image_decoder: mindspore`` (the same pixels as MindSpore's Decode on JPEG and PNG, and no
    crash on a damaged JPEG). ``python_multiprocessing`` as for :func:`train_loader`. Iterate
    with :func:`eval_batches`.
    """
    processes = use_processes(cfg, python_multiprocessing)
    decoder = decoder if decoder is not None else ImageDecoder()
    if processes:
        decoder.share_with_workers()
    workers = parallel_workers(cfg)
    dataset = create_dataset(name="imagenet", root=cfg.data_dir, split=split or cfg.val_split, shuffle=False,
                             num_shards=world if world > 1 else None, shard_id=rank if world > 1 else None,
                             num_parallel_workers=workers)
    dataset = dataset.map(decoder.decode_or_empty, input_columns="image", num_parallel_workers=workers,
                          python_multiprocessing=processes)
    dataset = dataset.filter(_decoded, input_columns=["image"], num_parallel_workers=1)
    resize = create_transforms(dataset_name="imagenet", image_resize=cfg.image_resize, is_training=False,
                               crop_pct=cfg.crop_pct, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    if not isinstance(resize[0], vision.Decode):
        raise RuntimeError(f"mindcv's evaluation transforms start with {type(resize[0]).__name__}, expected Decode")
    return create_loader(dataset, batch_size=batch_size or cfg.batch_size, drop_remainder=False, is_training=False,
                         num_classes=cfg.num_classes, transform=resize[1:], num_parallel_workers=workers,
                         python_multiprocessing=False)


@contextlib.contextmanager
def error_samples_mode(mode):
    """Set MindSpore's global ErrorSamplesMode for the duration of the block, then restore it.
    MindSpore reads the mode at run time, when a map operation fails on a sample (not when the
    pipeline is built or its iterator created), so the mode in force while a loader is iterated
    decides."""
    before = ds.config.get_error_samples_mode()
    ds.config.set_error_samples_mode(mode)
    try:
        yield
    finally:
        ds.config.set_error_samples_mode(before)


def train_batches(loader):
    """One epoch of a :func:`train_loader` as ``(images, labels)`` Tensors; a sample whose
    operations fail is replaced by another (ErrorSamplesMode.REPLACE), so every rank keeps its
    batch count. The mode before is restored when the generator ends or is closed."""
    with error_samples_mode(ds.config.ErrorSamplesMode.REPLACE):
        yield from loader.create_tuple_iterator(num_epochs=1)


def eval_batches(loader):
    """One pass over an :func:`eval_loader` as ``(images, labels)`` Tensors. Undecodable files are
    already filtered out by the loader; a sample failing in a later operation is skipped
    (ErrorSamplesMode.SKIP), never replaced. The mode before is restored afterwards."""
    with error_samples_mode(ds.config.ErrorSamplesMode.SKIP):
        yield from loader.create_tuple_iterator(num_epochs=1)
