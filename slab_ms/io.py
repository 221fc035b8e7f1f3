"""The one place files are written: a temporary file beside the target, renamed into place, so a
reader never sees half a file and a failed write leaves the old file (or nothing) behind."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str, prefix: str | None = None, suffix: str = ".tmp", fsync: bool = False,
                 mode: int | None = None) -> Iterator[str]:
    """Yield the path of a new temporary file in ``path``'s folder; when the block ends without an
    error the file replaces ``path`` (``os.replace``), else it is removed. ``fsync`` flushes it to
    disk before the rename; ``mode`` sets its permission bits (``mkstemp`` makes 0600 files)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{os.path.basename(path)}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)   # only the temporary file made above


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, suffix=".json") as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
