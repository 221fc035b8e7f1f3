"""Read and write PyTorch ``torch.save`` zip checkpoints without torch and without running code.

Reading: the pickle inside the zip is loaded with an unpickler whose ``find_class`` never
imports anything. The handful of globals a state dict needs (``OrderedDict``, the tensor
rebuild functions, storage types) map to local functions that build numpy arrays; every
other global (``os.system``, ``argparse.Namespace``, a yacs ``CfgNode``, an optimizer class)
becomes an inert :class:`Opaque` placeholder that swallows its arguments, so foreign objects
in a real-world checkpoint are skipped and hostile ones do nothing.

Writing: the pickle of a flat ``OrderedDict[str, tensor]`` (optionally wrapped in
``{"model": ...}``) is emitted opcode by opcode, in the format ``torch.load(weights_only=True)``
reads; storages are little-endian raw bytes in ``<archive>/data/<key>``.
"""
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from ..io import atomic_write
from ..errors import CheckpointError  # noqa: F401  (re-exported: callers import it from here too)


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_DTYPE_STORAGES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items() if not isinstance(v, str)}


class Opaque:
    """Stand-in for any object the checkpoint references that is not a tensor or container."""

    def __init__(self, *args, **kwargs):
        pass

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return Opaque()

    # dict/list style state applied by BUILD/SETITEMS/APPEND on a placeholder is ignored.
    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Storage:
    """A storage of the archive, read on first use."""

    def __init__(self, archive, key, dtype, numel):
        self.archive, self.key, self.dtype, self.numel = archive, key, dtype, numel
        self._data = None

    def array(self):
        if self._data is None:
            self._data = self.archive.read_storage(self.key, self.dtype, self.numel)
        return self._data


class TensorRef:
    """A tensor of the checkpoint; ``.numpy()`` materializes it (only for the keys we keep)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @property
    def shape(self):
        return self.size

    def numpy(self):
        flat = self.storage.array()
        if not all(isinstance(v, int) and v >= 0 for v in self.size + self.stride + (self.offset,)):
            raise CheckpointError("corrupt tensor metadata in checkpoint")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size or int(np.prod(self.size, dtype=np.float64)) > flat.size:
            raise CheckpointError(f"corrupt checkpoint: tensor of shape {self.size} reads past its storage "
                                  f"({flat.size} elements)")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=[s * flat.itemsize for s in self.stride])
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        return Opaque()
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data, archive):
        super().__init__(io.BytesIO(data))
        self.archive = archive

    def find_class(self, module, name):  # never imports: known names map to local code, the rest is inert
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return Opaque

    def persistent_load(self, pid):
        if (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            return _Storage(self.archive, pid[2], _STORAGE_DTYPES[pid[1].name], pid[4])
        return Opaque()


class _Archive:
    def __init__(self, zf, prefix, byteorder):
        self.zf, self.prefix, self.byteorder = zf, prefix, byteorder

    def read_storage(self, key, dtype, numel):
        name = f"{self.prefix}data/{key}"
        try:
            raw = self.zf.read(name)
        except KeyError:
            raise CheckpointError(f"corrupt checkpoint: storage {key!r} is missing from the archive") from None
        except Exception as e:  # bad CRC, zlib error, truncation, an unsupported compression flag...
            raise CheckpointError(f"corrupt checkpoint: cannot read storage {key!r} ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        if dtype == "bfloat16":  # numpy has no bfloat16: widen exactly to float32
            if len(raw) != 2 * numel:
                raise CheckpointError(f"corrupt checkpoint: storage {key!r} has {len(raw)} bytes, expected {2 * numel}")
            bits = np.frombuffer(raw, dtype="<u2" if self.byteorder == "little" else ">u2").astype(np.uint32)
            return (bits << 16).view(np.float32)
        dt = np.dtype(dtype).newbyteorder("<" if self.byteorder == "little" else ">")
        if len(raw) != dt.itemsize * numel:
            raise CheckpointError(f"corrupt checkpoint: storage {key!r} has {len(raw)} bytes, "
                                  f"expected {dt.itemsize * numel}")
        return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=False)


def read_torch_checkpoint(path):
    """Load a ``torch.save`` zip file into plain Python objects with :class:`TensorRef` leaves."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # a damaged end-of-archive record (e.g. a multi-disk flag) raises, not False
        is_zip = False
    if not is_zip:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (expected the zip format of torch.save, "
                              "torch>=1.6; legacy and other formats are not read)")
    try:
        zf = zipfile.ZipFile(path)
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (no single <archive>/data.pkl inside)")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in zf.namelist():
            byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path}: corrupt checkpoint (byteorder {byteorder!r})")
        data = zf.read(pkl[0])
        return _SafeUnpickler(data, _Archive(zf, prefix, byteorder)).load()
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt checkpoint (pickle nested too deeply)") from None
    except Exception as e:  # any parse failure of a damaged file becomes one clear line
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from None


def _is_tensor(v):
    return isinstance(v, TensorRef)


def extract_state_dict(obj, key=None, path="checkpoint"):
    """The state dict of a loaded checkpoint: bare, or nested under ``key`` / "model" /
    "state_dict" / "model_ema". Returns ``(OrderedDict[name, TensorRef], chosen_key)``."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: the checkpoint holds a {type(obj).__name__}, not a state dict")
    if key is not None:
        if key not in obj or not isinstance(obj[key], dict):
            raise CheckpointError(f"{path}: no state dict under key {key!r} (top-level keys: "
                                  f"{', '.join(map(str, obj))})")
        obj, chosen = obj[key], key
    elif obj and all(_is_tensor(v) for v in obj.values()):
        chosen = None
    else:
        for k in ("model", "state_dict", "model_ema"):
            if isinstance(obj.get(k), dict):
                obj, chosen = obj[k], k
                break
        else:
            raise CheckpointError(f"{path}: no state dict found (top-level keys: {', '.join(map(str, obj))}); "
                                  "pass --key")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and _is_tensor(v))]
    if bad:
        raise CheckpointError(f"{path}: the state dict has {len(bad)} entries that are not tensors, e.g. {bad[0]!r}")
    return OrderedDict(obj), chosen


# --------------------------------------------------------------------------------------- writing
def _str(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(v):
    if -2 ** 31 <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def write_torch_state_dict(path, state_dict, wrap_key=None):
    """Write ``state_dict`` (name -> numpy array) as a ``torch.save`` zip, atomically.

    With ``wrap_key`` the file holds ``{wrap_key: state_dict}`` (upstream saves ``{"model": ...}``).
    """
    empty_od = _global("collections", "OrderedDict") + b")R"
    body = [b"\x80\x02"]
    if wrap_key is not None:
        body.append(b"}(" + _str(wrap_key))
    body.append(empty_od + b"(")
    storages = []
    for i, (name, arr) in enumerate(state_dict.items()):
        arr = np.array(arr, order="C", copy=False)  # (ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype not in _DTYPE_STORAGES:
            raise CheckpointError(f"cannot write {name}: dtype {arr.dtype} has no torch storage type")
        key = str(i)
        storages.append((key, arr))
        pid = _tuple([_str("storage"), _global("torch", _DTYPE_STORAGES[arr.dtype]), _str(key), _str("cpu"),
                      _int(int(arr.size))])
        args = _tuple([pid + b"Q", _int(0), _tuple([_int(int(n)) for n in arr.shape]),
                       _tuple([_int(s) for s in _contiguous_strides(arr.shape)]), b"\x89", empty_od])
        body.append(_str(name) + _global("torch._utils", "_rebuild_tensor_v2") + args + b"R")
    body.append(b"u")
    if wrap_key is not None:
        body.append(b"u")
    body.append(b".")
    archive = "archive"
    with atomic_write(path, suffix=".pth") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", b"".join(body))
        zf.writestr(f"{archive}/byteorder", b"little")
        for key, arr in storages:
            zf.writestr(f"{archive}/data/{key}", arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
        zf.writestr(f"{archive}/version", b"3\n")
