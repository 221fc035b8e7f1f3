import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import slab_ms  # noqa: E402  (before mindspore: oneDNN ISA)
import mindspore as ms  # noqa: E402

SHARED = os.environ.get("SLAB_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
REFERENCE = os.path.join(SHARED, "reference")

# The small variants of shared/reference/README.md.
SWIN_MINI = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], num_classes=10, drop_path_rate=0.0)


def rel_err(got, ref):
    """The project's parity metric: max|diff| / max(1, max|ref|)."""
    return float(np.abs(np.asarray(got) - np.asarray(ref)).max() / max(1.0, float(np.abs(ref).max())))


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)
    yield


@pytest.fixture(scope="session")
def reference_dir():
    if not os.path.isdir(REFERENCE):
        pytest.fail(f"shared reference data not found at {REFERENCE} (set SLAB_SHARED)")
    return REFERENCE
