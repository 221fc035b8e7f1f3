"""The PyTorch reference used by the parity tests reproduces the official outputs and layouts."""
import json
import os

import numpy as np
import pytest
import torch

import torch_ref
from conftest import SWIN_MINI


@pytest.mark.parametrize("golden,model", [("slab_swin_mini", "slab_swin_tiny"), ("swin_prepbn_mini", "swin_tiny_prepbn")])
def test_reference_reproduces_upstream_golden(golden, model, reference_dir):
    ref = torch_ref.create_model(model, **SWIN_MINI)
    sd = torch.load(os.path.join(reference_dir, "golden", golden + ".pth"), weights_only=True)["model"]
    ref.load_state_dict(sd, strict=True)
    with open(os.path.join(reference_dir, "checkpoints", golden + ".json")) as f:
        layout = json.load(f)["state_dict"]
    assert [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in ref.state_dict().items()] == layout
    gold = np.load(os.path.join(reference_dir, "golden", golden + ".npz"))
    x = torch.from_numpy(gold["input"])
    ref.eval()
    with torch.no_grad():
        np.testing.assert_allclose(ref(x).numpy(), gold["logits_eval"], rtol=0, atol=1e-5)
    ref.train()
    with torch.no_grad():
        np.testing.assert_allclose(ref(x).numpy(), gold["logits_train"], rtol=0, atol=1e-5)
    state = ref.state_dict()
    got = [int(state[str(n)]) for n in gold["counter_names"]]
    np.testing.assert_array_equal(got, gold["counters_after_train_forward"])
