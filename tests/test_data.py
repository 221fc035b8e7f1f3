"""The data pipeline (slab_ms.engine.data): the decode step gives the same pixels and crops as
mindcv's native ops, records bad files by content and opens no Pillow plugin outside the image
formats; evaluation skips bad files while training replaces them; the start-up content check
splits the files between ranks and caches its result next to the data."""
import gc
import io
import json
import os
import shutil
import stat

import numpy as np
import pytest
import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from PIL import Image

from conftest import ROOT, make_digits, undecodable_images
from slab_ms.engine import data as data_lib
from slab_ms.engine.config import ConfigError, load_config



@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data") / "digits")
    make_digits.build(out, size=32)
    return out


def _cfg(digits, **extra):
    return load_config(os.path.join(ROOT, "configs", "quickstart_digits.yaml"),
                       {"data_dir": digits, **{k: str(v) for k, v in extra.items()}})


def _images(dataset):
    return np.concatenate([x for x, _ in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)])


def test_decoder_gives_mindspores_pixels_and_records_bad_files_once(digits, tmp_path):
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(digits, "val")) for f in fs)[:20]
    decoder = data_lib.ImageDecoder()
    for f in files:
        raw = np.fromfile(f, np.uint8)
        np.testing.assert_array_equal(decoder(raw), vision.Decode()(raw))
    assert len(decoder) == 0
    jpeg, png = undecodable_images(files[0])
    for bad in (jpeg, png, jpeg, b""):
        with pytest.raises(ValueError, match="cannot decode image"):
            decoder(np.frombuffer(bad, np.uint8))
    assert len(decoder) == 3   # distinct contents
    # Pillow would hand this file to its EPS plugin (which runs Ghostscript); the decoder never opens it
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"
    with pytest.raises(ValueError, match="UnidentifiedImageError"):
        decoder(np.frombuffer(eps, np.uint8))
    assert len(decoder) == 4
    (tmp_path / "gone.png").write_bytes(png)
    decoder.add_files([str(tmp_path / "gone.png"), str(tmp_path / "missing.png")])
    assert len(decoder) == 5   # the PNG was already known by content; the missing file is new
    with pytest.raises(ConfigError, match=r"5 image files in val/ cannot be read or decoded, more than "
                                          r"max_bad_images=4; e\.g\. .*missing\.png"):
        decoder.check_limit(4, "val")
    decoder.check_limit(5, "val")
    decoder.check_limit(-1, "val")


def test_failures_are_named_by_content(digits, tmp_path):
    split = tmp_path / "train"
    (split / "a").mkdir(parents=True)
    src = os.path.join(digits, "val", "1", sorted(os.listdir(os.path.join(digits, "val", "1")))[0])
    jpeg, png = undecodable_images(src)
    (split / "a" / "x.jpg").write_bytes(jpeg)
    (split / "a" / "y.png").write_bytes(png[:-1] + b"\x00")   # same size, other content
    decoder = data_lib.ImageDecoder(str(split))
    for bad in (jpeg, png):
        with pytest.raises(ValueError):
            decoder(np.frombuffer(bad, np.uint8))
    found = decoder.new_failures()
    assert sorted(p for p, _ in found) == sorted(["?", str(split / "a" / "x.jpg")])
    assert decoder.new_failures() == []   # each is reported once


def test_split_crop_equals_mindcvs_fused_crop_on_png(digits):
    """ImageDecoder + RandomResizedCrop draws the same crops as mindcv's RandomCropDecodeResize:
    with the same seed the training pipelines give identical tensors (the digits are PNG)."""
    out = []
    for decoder in ("pillow", "mindspore"):
        cfg = _cfg(digits, image_decoder=decoder, image_resize=24)
        ops = data_lib.train_transforms(cfg)
        assert isinstance(ops[0], data_lib.ImageDecoder if decoder == "pillow" else vision.RandomCropDecodeResize)
        ds.config.set_seed(5)
        d = ds.ImageFolderDataset(os.path.join(digits, "train"), shuffle=True, num_samples=64)
        out.append(_images(d.map(ops, input_columns="image").batch(16)))
    assert out[0].shape == (64, 3, 24, 24) and np.abs(out[0]).max() > 0
    np.testing.assert_array_equal(out[0], out[1])


def test_image_decoder_must_be_known(digits):
    with pytest.raises(ConfigError, match="image_decoder.*'opencv' is not one of pillow, mindspore"):
        _cfg(digits, image_decoder="opencv")


def _small_tree(digits, root, splits=("train", "val"), per_class=5, bad=True):
    """Two classes of ``per_class`` digits PNGs per split, plus (``bad``) one PNG that passes the
    start-up content check but cannot be decoded, in class ``1`` of each split."""
    for split in splits:
        for c in ("0", "1"):
            src = os.path.join(digits, "val", c)
            os.makedirs(os.path.join(root, split, c))
            for f in sorted(os.listdir(src))[:per_class]:
                shutil.copy(os.path.join(src, f), os.path.join(root, split, c, f))
        if bad:
            good = os.path.join(root, split, "1", sorted(os.listdir(os.path.join(root, split, "1")))[0])
            with open(os.path.join(root, split, "1", "0000_idat.png"), "wb") as f:
                f.write(undecodable_images(good)[1])
    return str(root)


def _counts(batches):
    return [int(x.shape[0]) for x, _ in batches]


def test_evaluation_skips_an_undecodable_file_and_counts_it(digits, tmp_path):
    """10 good files and 1 that cannot be decoded: 10 images are evaluated, none twice, and the
    decoder counts and names the bad one; also while the global mode is REPLACE (training's)."""
    root = _small_tree(digits, tmp_path / "d", splits=("val",))
    cfg = _cfg(root, num_classes=2, batch_size=4)
    _, decoder = data_lib.check_image_folder(root, "val", 2, 5)
    assert len(decoder) == 0   # the bad PNG passes the content check
    ds.config.set_error_samples_mode(ds.config.ErrorSamplesMode.REPLACE)
    loader = data_lib.eval_loader(cfg, decoder=decoder)
    assert _counts(data_lib.eval_batches(loader)) == [4, 4, 2]
    assert ds.config.get_error_samples_mode() == ds.config.ErrorSamplesMode.REPLACE   # restored
    assert _counts(loader.create_tuple_iterator(num_epochs=1)) == [4, 4, 2]   # the loader filters by itself
    assert len(decoder) == 1
    assert [p for p, _ in decoder.new_failures()] == [os.path.join(root, "val", "1", "0000_idat.png")]


def test_training_after_evaluation_still_replaces(digits, tmp_path):
    """In one process, a training epoch iterated after an evaluation keeps its batch count: the
    bad file is replaced by another sample there, while evaluation left it out."""
    root = _small_tree(digits, tmp_path / "d")
    cfg = _cfg(root, num_classes=2, batch_size=4, drop_remainder=False)
    decoders = {s: data_lib.check_image_folder(root, s, 2, 5)[1] for s in ("train", "val")}
    val = data_lib.eval_loader(cfg, decoder=decoders["val"])
    for epoch in range(2):
        train = data_lib.train_loader(cfg, epoch=epoch, decoder=decoders["train"])
        assert _counts(data_lib.train_batches(train)) == [4, 4, 3]
        assert _counts(data_lib.eval_batches(val)) == [4, 4, 2]
    assert len(decoders["train"]) == 1 and len(decoders["val"]) == 1


def test_failures_in_worker_processes_are_counted(digits, tmp_path):
    """With python_multiprocessing the decoder runs in worker processes; their failures still
    reach the main process's count (through the decoder's failure file), and training still
    replaces while evaluation skips."""
    root = _small_tree(digits, tmp_path / "d")
    cfg = _cfg(root, num_classes=2, batch_size=4, drop_remainder=False)
    decoders = {s: data_lib.check_image_folder(root, s, 2, 5)[1] for s in ("train", "val")}
    train = data_lib.train_loader(cfg, decoder=decoders["train"], python_multiprocessing=True)
    assert _counts(data_lib.train_batches(train)) == [4, 4, 3]
    val = data_lib.eval_loader(cfg, decoder=decoders["val"], python_multiprocessing=True)
    assert _counts(data_lib.eval_batches(val)) == [4, 4, 2]
    for split in ("train", "val"):
        assert len(decoders[split]) == 1
        assert [p for p, _ in decoders[split].new_failures()] == [os.path.join(root, split, "1", "0000_idat.png")]
    log = decoders["val"]._log
    del decoders, train, val
    gc.collect()
    assert not os.path.exists(log)   # the decoder removes the failure file it created


def _bad_tree(digits, root, classes=3, per_class=7):
    """``classes`` folders of ``per_class`` PNGs, two of them per folder no image (unreadable)."""
    for k in range(classes):
        src = os.path.join(digits, "val", str(k))
        folder = os.path.join(root, "train", str(k))
        os.makedirs(folder)
        for f in sorted(os.listdir(src))[:per_class - 2]:
            shutil.copy(os.path.join(src, f), os.path.join(folder, f))
        for n in (f"{k}_junk_a.png", f"{k}_junk_b.jpg"):
            with open(os.path.join(folder, n), "wb") as f:
                f.write(n.encode())   # distinct contents: the decoder counts files by content
    return str(root)


def test_each_rank_checks_its_own_share(digits, tmp_path):
    """The ranks' shares split every class folder's files without overlap, and what each rank
    finds unreadable is the unreadable files of its share; over the ranks, all of them."""
    root = _bad_tree(digits, tmp_path / "d")
    path = os.path.join(root, "train")
    files = data_lib.image_files(path, data_lib.class_folders(path))
    everything = sorted(data_lib.unreadable_images(path, list(files)))
    assert len(everything) == 6
    for world in (1, 2, 3, 4):
        found = []
        for k, names in enumerate(files.values()):
            shares = [data_lib.content_check_share(names, k, r, world) for r in range(world)]
            assert sorted(sum(shares, [])) == names and max(map(len, shares)) - min(map(len, shares)) <= 1
        for rank in range(world):
            limit = 6 if world == 1 else 4
            _, decoder = data_lib.check_image_folder(root, "train", 3, limit, rank=rank, world=world, cache=False)
            mine = [p for p, _ in decoder.new_failures()]
            share = {os.path.join(path, c, n) for k, (c, names) in enumerate(files.items())
                     for n in data_lib.content_check_share(names, k, rank, world)}
            assert set(mine) <= share
            found += mine
        assert sorted(found) == everything
    with pytest.raises(ConfigError, match=r"has 3 unreadable image files in the share of rank 1 \(1/2 of its "
                                          r"files\), more than max_bad_images=2"):
        data_lib.check_image_folder(root, "train", 3, 2, rank=1, world=2, cache=False)
    assert not any(f.startswith(data_lib.CONTENT_CHECK_CACHE) for f in os.listdir(path))   # cache=False


def test_the_content_check_is_cached_next_to_the_data(digits, tmp_path, monkeypatch):
    """A second start reads no image file; a changed file invalidates its folder only; a corrupt
    or hostile cache file is ignored and rewritten, a link or FIFO in its place is neither read
    nor replaced; an unwritable data folder falls back to ~/.cache (XDG_CACHE_HOME) or to no
    cache, without an error; no file is left behind and none that the check did not create is
    removed."""
    root = _bad_tree(digits, tmp_path / "d")
    path = os.path.join(root, "train")
    reads = []
    real = data_lib.is_readable_image
    monkeypatch.setattr(data_lib, "is_readable_image", lambda p: reads.append(p) or real(p))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def check(rank=0, world=1):
        reads.clear()
        _, decoder = data_lib.check_image_folder(root, "train", 3, 10, rank=rank, world=world)
        return sorted(os.path.basename(p) for p, _ in decoder.new_failures())

    bad = ["0_junk_a.png", "0_junk_b.jpg", "1_junk_a.png", "1_junk_b.jpg", "2_junk_a.png", "2_junk_b.jpg"]
    assert check() == bad and len(reads) == 21
    cache = os.path.join(path, ".slab_ms_content_check.0-of-1.json")
    assert os.path.isfile(cache)
    assert check() == bad and reads == []   # from the cache
    files = data_lib.image_files(path, ["0", "1", "2"])
    share = sorted(n for k, names in enumerate(files.values()) for n in data_lib.content_check_share(names, k, 1, 2))
    assert check(1, 2) == [b for b in bad if b in share] and len(reads) == len(share) == 10
    assert check(1, 2) == [b for b in bad if b in share] and reads == []   # a cache file per rank and world
    before = set(os.listdir(path))

    with open(os.path.join(path, "1", "1_junk_a.png"), "wb") as f:   # repaired: now a valid PNG
        f.write(open(os.path.join(path, "0", sorted(os.listdir(os.path.join(path, "0")))[0]), "rb").read())
    assert check() == [b for b in bad if b != "1_junk_a.png"] and {os.path.dirname(p) for p in reads} == \
        {os.path.join(path, "1")}
    os.remove(os.path.join(path, "2", "2_junk_a.png"))
    assert check() == ["0_junk_a.png", "0_junk_b.jpg", "1_junk_b.jpg", "2_junk_b.jpg"] and len(reads) == 6

    good = check()
    folders = json.loads(open(cache).read())["folders"]
    hostile = {"version": 1, "rank": 0, "world": 1,   # right keys, but claims files outside the share
               "folders": {c: {"key": e["key"], "bad": ["../../../etc/passwd"]} for c, e in folders.items()}}
    for content in (b"\x80garbage", b"[" * 100000, json.dumps({"version": 1, "folders": []}).encode(),
                    json.dumps(hostile).encode()):
        with open(cache, "wb") as f:
            f.write(content)
        assert check() == good and len(reads) == 20   # all read again, cache rewritten
        assert json.loads(open(cache).read())["folders"] == folders
    fallback = data_lib.content_check_cache_files(path)[1]
    assert fallback.startswith(str(tmp_path / "xdg" / "slab_ms")) and not os.path.exists(fallback)
    os.remove(cache)
    os.mkfifo(cache)   # not read (no blocking), not replaced: the cache goes to the fallback
    assert check() == good and len(reads) == 20
    assert stat.S_ISFIFO(os.lstat(cache).st_mode) and os.path.isfile(fallback)
    assert check() == good and reads == []   # from the fallback
    os.remove(cache)
    os.remove(fallback)
    os.symlink(os.path.join(str(tmp_path), "elsewhere.json"), cache)   # not followed, not replaced
    assert check() == good and len(reads) == 20 and not os.path.exists(tmp_path / "elsewhere.json")
    assert os.path.islink(cache) and os.path.isfile(fallback)
    os.remove(cache)
    os.remove(fallback)
    assert check() == good and len(reads) == 20 and os.path.isfile(cache) and not os.path.exists(fallback)
    assert set(os.listdir(path)) == before   # no temporary file left, nothing else touched

    os.remove(cache)
    real_mkstemp = data_lib.tempfile.mkstemp

    def unwritable(*args, dir=None, **kw):
        if dir == path:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(data_lib.tempfile, "mkstemp", unwritable)
    assert check() == good and len(reads) == 20 and os.path.isfile(fallback) and not os.path.exists(cache)
    assert check() == good and reads == []   # from the fallback
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/none")   # nothing writable: no cache, no error
    assert check() == good and len(reads) == 20
    assert set(os.listdir(path)) == before - {os.path.basename(cache)}
