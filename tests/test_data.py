"""The data pipeline's decode step (slab_ms.engine.data.ImageDecoder): same pixels and crops as
mindcv's native ops, bad files recorded by content, no Pillow plugin outside the image formats."""
import io
import os
import sys

import numpy as np
import pytest
import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from PIL import Image

from conftest import ROOT, undecodable_images
from slab_ms.engine import data as data_lib
from slab_ms.engine.config import ConfigError, load_config

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_digits  # noqa: E402


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
    with pytest.raises(ConfigError, match="image_decoder must be pillow or mindspore"):
        _cfg(digits, image_decoder="opencv")
