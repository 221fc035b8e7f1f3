"""convert.py on Hugging Face LLaMA checkpoints: bit-exact round trips (float32 and float16, both
file formats, sharded input), a folder upstream's from_pretrained loads, and one-line errors with
nothing written for missing, foreign, inconsistent or hostile input."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from slab_ms.checkpoint import read_ms_checkpoint
from slab_ms.cli.convert import main as convert_main
from slab_ms.convert.hf import load_llama, sidecar_path
from slab_ms.convert.torch_ref import llama as ref_llama


@pytest.fixture(scope="module")
def mini(reference_dir):
    return os.path.join(reference_dir, "llama", "mini")


def _convert(*args):
    return convert_main([str(a) for a in args])


def _assert_same_state(a, b, ordered=True):
    if ordered:
        assert list(a) == list(b)
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), k


def _torch_sd(path):
    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def _half_folder(mini, dest):
    """The mini as a float16 HF folder (what save_pretrained writes for torch_dtype float16)."""
    os.makedirs(dest)
    config = json.load(open(os.path.join(mini, "config.json")))
    config["torch_dtype"] = "float16"
    json.dump(config, open(os.path.join(dest, "config.json"), "w"))
    sd = {k: (v.half() if v.is_floating_point() else v)
          for k, v in torch.load(os.path.join(mini, "pytorch_model.bin"), weights_only=True).items()}
    torch.save(sd, os.path.join(dest, "pytorch_model.bin"))
    return {k: v.numpy() for k, v in sd.items()}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_is_bit_exact_in_both_formats(mini, tmp_path, dtype, capsys):
    if dtype == "float32":
        src = mini
        original = _torch_sd(os.path.join(mini, "pytorch_model.bin"))
    else:
        src = tmp_path / "half"
        original = _half_folder(mini, src)
    assert _convert("--from", "torch", "--input", src, "--output", tmp_path / "m.ckpt") == 0
    params = read_ms_checkpoint(tmp_path / "m.ckpt")
    assert params["model.embed_tokens.weight"].dtype == np.dtype(dtype)        # float16 stays float16
    assert params["model.norm.num_step"].dtype == np.int64 and params["model.norm.num_step"].shape == ()
    assert _convert("--from", "mindspore", "--input", tmp_path / "m.ckpt", "--output", tmp_path / "bin",
                    "--hf-format", "bin") == 0
    assert _convert("--from", "mindspore", "--input", tmp_path / "m.ckpt", "--output", tmp_path / "st") == 0
    assert sorted(os.listdir(tmp_path / "bin")) == ["config.json", "generation_config.json", "pytorch_model.bin"]
    back = _torch_sd(tmp_path / "bin" / "pytorch_model.bin")
    _assert_same_state(original, back)                                          # key order included
    _assert_same_state(original, load_file(str(tmp_path / "st" / "model.safetensors")), ordered=False)

    # what upstream's from_pretrained needs: config.json of a LlamaForCausalLM, strict state dict
    config = json.load(open(tmp_path / "st" / "config.json"))
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llama.LlamaForCausalLM"   # kept from the input
    assert config["torch_dtype"] == dtype and config["num_attention_heads"] == 4
    ref = ref_llama.create_model("slab_llama_mini")
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)

    # and the folder converts again to the same MindSpore checkpoint (--verify: the reference on it)
    verify = ["--verify"] if dtype == "float32" else []
    capsys.readouterr()
    assert _convert("--from", "torch", "--input", tmp_path / "st", "--output", tmp_path / "again.ckpt", *verify) == 0
    _assert_same_state(params, read_ms_checkpoint(tmp_path / "again.ckpt"))
    if verify:
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith("verify:") and float(line.split("relative = ")[1].split()[0]) <= 1e-5


def test_sharded_folders_and_bare_state_dicts_convert(mini, tmp_path):
    sd = load_file(os.path.join(mini, "model.safetensors"))
    keys = sorted(sd)
    for fmt in ("safetensors", "bin"):
        d = tmp_path / f"sharded_{fmt}"
        d.mkdir()
        shutil.copy(os.path.join(mini, "config.json"), d)
        weight_map = {}
        for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
            name = f"model-{i + 1:05d}-of-00002.{'safetensors' if fmt == 'safetensors' else 'bin'}"
            if fmt == "safetensors":
                save_file({k: sd[k] for k in part}, str(d / name), metadata={"format": "pt"})
            else:
                torch.save({k: torch.from_numpy(sd[k]) for k in part}, d / name)
            weight_map.update({k: name for k in part})
        index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
        json.dump({"metadata": {}, "weight_map": weight_map}, open(d / index, "w"))
        assert _convert("--from", "torch", "--input", d, "--output", tmp_path / f"{fmt}.ckpt") == 0
    assert _convert("--from", "torch", "--input", os.path.join(mini, "pytorch_model.bin"),
                    "--output", tmp_path / "bare.ckpt") == 0   # no config.json: heads from inv_freq
    reference = read_ms_checkpoint(tmp_path / "bare.ckpt")
    for fmt in ("safetensors", "bin"):
        _assert_same_state(reference, read_ms_checkpoint(tmp_path / f"{fmt}.ckpt"))

    # newer transformers do not save inv_freq: accepted, filled with what the model computes
    no_inv = {k: v for k, v in sd.items() if not k.endswith("inv_freq")}
    save_file(no_inv, str(tmp_path / "no_inv.safetensors"), metadata={"format": "pt"})
    assert _convert("--from", "torch", "--input", tmp_path / "no_inv.safetensors", "--output", tmp_path / "n.ckpt",
                    "--set", "num_attention_heads=4") == 0
    _assert_same_state(reference, read_ms_checkpoint(tmp_path / "n.ckpt"))


def _write_bad(mini, d):
    """(name, --from, input, extra args, text expected in the one-line error)."""
    sd = load_file(os.path.join(mini, "model.safetensors"))
    config = json.load(open(os.path.join(mini, "config.json")))

    def folder(name, cfg=None, weights=None, raw_config=None):
        p = d / name
        p.mkdir()
        if raw_config is not None:
            (p / "config.json").write_bytes(raw_config)
        elif cfg is not None:
            json.dump(cfg, open(p / "config.json", "w"))
        if weights is not None:
            save_file(weights, str(p / "model.safetensors"), metadata={"format": "pt"})
        return p

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    hostile = {k: torch.from_numpy(v) for k, v in sd.items()}
    hostile["model.layers.0.mlp.up_proj.weight"] = Exploit()
    torch.save(hostile, d / "exploit.bin")
    (d / "exploit_index").mkdir()
    json.dump({"weight_map": {"model.embed_tokens.weight": "../../etc/passwd"}},
              open(d / "exploit_index" / "model.safetensors.index.json", "w"))
    raw = open(os.path.join(mini, "model.safetensors"), "rb").read()
    (d / "corrupt.safetensors").write_bytes(b"\xff" * 8 + raw[8:])
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    wrong_theta = dict(sd, **{k: (sd[k] ** 1.5).astype(np.float32) for k in sd if k.endswith("inv_freq")})
    missing = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}
    extra = dict(sd, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
    return [
        ("missing folder", "torch", d / "nothing", [], "no such file"),
        ("folder without weights", "torch", folder("empty", config), [], "no model.safetensors"),
        ("gpt2 config", "torch", folder("gpt2", dict(config, model_type="gpt2"), sd), [], "'gpt2' model"),
        ("broken config.json", "torch", folder("broken", raw_config=b"{not json", weights=sd), [],
         "not a readable JSON"),
        ("config disagrees", "torch", folder("sizes", dict(config, hidden_size=128), sd), [],
         "config.json says hidden_size=128"),
        ("tied embeddings", "torch", folder("tied", dict(config, tie_word_embeddings=True), sd), [], "tied word"),
        ("missing tensor", "torch", folder("missing", config, missing), [],
         "1 missing keys: model.layers.1.mlp.up_proj"),
        ("unexpected tensor", "torch", folder("extra", config, extra), [], "unexpected keys"),
        ("other rope theta", "torch", folder("theta", config, wrong_theta), [], "rotary frequencies"),
        ("pickled code", "torch", d / "exploit.bin", [], "no state dict found"),
        ("shard outside the folder", "torch", d / "exploit_index", [], "not a file name in the folder"),
        ("corrupt safetensors", "torch", d / "corrupt.safetensors", [], "not a readable safetensors file"),
        ("truncated safetensors", "torch", d / "truncated.safetensors", [], "not a readable safetensors file"),
        ("vision model for a LLaMA", "torch", mini, ["--model", "slab_deit_tiny"], "cannot be converted as"),
    ]


def test_bad_and_hostile_inputs_fail_with_one_line_and_write_nothing(mini, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = _write_bad(mini, bad)
    out = tmp_path / "out"
    out.mkdir()
    for name, source, src, extra, expected in cases:
        capsys.readouterr()
        rc = _convert("--from", source, "--input", src, "--output", out / "x.ckpt", *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1, (name, err)
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], (name, err)
        assert os.listdir(out) == [], name
    assert not (tmp_path / "PWNED").exists() and not (bad / "PWNED").exists()

    # an existing output needs --force; a fully fused checkpoint has no upstream layout
    assert _convert("--from", "torch", "--input", mini, "--output", out / "m.ckpt") == 0
    assert os.path.isfile(sidecar_path(str(out / "m.ckpt")))
    assert _convert("--from", "torch", "--input", mini, "--output", out / "m.ckpt") == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert _convert("--from", "torch", "--input", mini, "--output", out / "m.ckpt", "--force") == 0
    import slab_ms
    from slab_ms.checkpoint import save_ms_checkpoint
    fused = slab_ms.reparameterize(load_llama(str(out / "m.ckpt")))
    save_ms_checkpoint({n: p.asnumpy() for n, p in fused.parameters_and_names()}, str(out / "fused.ckpt"))
    before = sorted(os.listdir(out))
    capsys.readouterr()
    assert _convert("--from", "mindspore", "--input", out / "fused.ckpt", "--output", out / "hf") == 1
    assert "lm_head" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before
    # ... but it loads and runs with no sidecar (sizes from the shapes, heads from inv_freq)
    assert load_llama(str(out / "fused.ckpt")).config["folded"] == "all"
    with pytest.raises(pickle.UnpicklingError):   # the exploit file really is one
        torch.load(bad / "exploit.bin", weights_only=True)
