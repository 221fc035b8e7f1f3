"""Hugging Face LLaMA checkpoints <-> MindSpore (``convert.py`` routes LLaMA inputs here).

Reads an HF model folder (``config.json`` with ``model.safetensors``, ``pytorch_model.bin``, or
either one sharded with its ``*.index.json``) or a bare weights file, infers the size from
config.json and the shapes, and writes ``X.ckpt`` plus ``X.config.json`` (the registered model,
its constructor overrides and the original config.json, so the checkpoint can be rebuilt, e.g.
by ``generate.py``). The way back writes an HF folder (``config.json``,
``generation_config.json`` and ``model.safetensors`` or ``pytorch_model.bin``) that upstream's
``from_pretrained`` loads with no missing or unexpected keys.

Safety as in the rest of the converter: ``pytorch_model.bin`` goes through the code-free reader
of :mod:`.torch_io`, safetensors through the ``safetensors`` package's numpy API; every problem
is one :class:`CheckpointError` line, and outputs are written to temporary names and renamed,
so nothing partial is left. Tensors keep their dtype (float16 stays float16, int64 counters stay
int64); bfloat16 ``.bin`` tensors are widened exactly to float32 (numpy has no bfloat16).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from typing import Any

import numpy as np
from mindspore import dtype as mstype
from mindspore import nn

from ..checkpoint import load_param_dict, model_params, read_ms_checkpoint, save_ms_checkpoint
from ..io import atomic_write, write_json
from ..errors import CheckpointError, ConfigError
from ..models.llama import LLAMA_DEFAULTS, LlamaForCausalLM, infer_llama_config, is_llama_layout, rotary_inv_freq
from ..models.registry import create_model, is_model, list_models
from .mapping import ms_to_torch, ms_to_torch_name, torch_to_ms
from .torch_io import extract_state_dict, read_torch_checkpoint, write_torch_state_dict

SAFETENSORS = "model.safetensors"
BIN = "pytorch_model.bin"
SIDECAR_SUFFIX = ".config.json"
MAX_CONFIG_BYTES = 1 << 20
INV_FREQ = "model.layers.{}.self_attn.rotary_emb.inv_freq"


def llama_counters(net):
    """``{torch-style name: int}`` of every schedule counter and ``num_batches_tracked`` of ``net``."""
    return {ms_to_torch_name(name): int(p.asnumpy()) for name, p in net.parameters_and_names()
            if p.dtype == mstype.int64}


def sidecar_path(ckpt_path):
    """``X.ckpt`` -> ``X.config.json``, the config written next to a converted checkpoint."""
    return os.path.splitext(os.fspath(ckpt_path))[0] + SIDECAR_SUFFIX


def is_language_model(name):
    return name in list_models("language")


# --------------------------------------------------------------------------------------- reading
def read_json(path, what="config"):
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: {what} larger than {MAX_CONFIG_BYTES} bytes")
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except CheckpointError:
        raise
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable JSON {what} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the {what} holds a {type(data).__name__}, not an object")
    return data


def read_safetensors(path):
    """``OrderedDict[name, np.ndarray]`` via the safetensors package's numpy API."""
    from safetensors.numpy import load_file
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        return OrderedDict(load_file(path))
    except Exception as e:  # SafetensorError (bad header, truncation), or a dtype numpy lacks (bfloat16)
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (bfloat16 has no numpy type: save the model in float16 or float32)" if "bf16" in text.lower() \
            or "bfloat16" in text.lower() else ""
        raise CheckpointError(f"{path}: not a readable safetensors file ({text}){hint}") from None


def _read_weights_file(path, key=None, loaded=None):
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    sd, _ = extract_state_dict(loaded if loaded is not None else read_torch_checkpoint(path), key=key, path=path)
    return sd


def _read_sharded(index_path, key=None):
    index = read_json(index_path, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no weight_map in the shard index")
    folder = os.path.dirname(os.path.abspath(index_path))
    shards = []
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index_path}: shard {shard!r} of {name!r} is not a file name in the folder")
        if shard not in shards:
            shards.append(shard)
    out = OrderedDict()
    for shard in shards:
        path = os.path.join(folder, shard)
        if not os.path.isfile(path):
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        for name, value in _read_weights_file(path, key).items():
            if name in out:
                raise CheckpointError(f"{path}: tensor {name!r} appears in two shards")
            if weight_map.get(name) != shard:
                raise CheckpointError(f"{path}: tensor {name!r} is not mapped to this shard by the index")
            out[name] = value
    missing = [k for k in weight_map if k not in out]
    if missing:
        raise CheckpointError(f"{index_path}: {len(missing)} indexed tensors are in no shard, e.g. {missing[0]!r}")
    return out


def read_hf_checkpoint(path, key=None, loaded=None):
    """``(state_dict, config or None)`` of an HF folder or a weights file (``.safetensors``,
    ``.bin``/``.pth``, or a shard ``*.index.json``); ``loaded``: a ``.bin``/``.pth`` file as
    :mod:`.route` read it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        config = read_json(config_path) if os.path.isfile(config_path) else None
        for name in (SAFETENSORS, SAFETENSORS + ".index.json", BIN, BIN + ".index.json"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                sd = _read_sharded(candidate, key) if name.endswith(".json") else _read_weights_file(candidate, key)
                return sd, config
        raise CheckpointError(f"{path}: no {SAFETENSORS}, {BIN} or shard index in the folder")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder")
    if path.endswith(".index.json"):
        return _read_sharded(path, key), None
    return _read_weights_file(path, key, loaded), None


def check_hf_config(config, path):
    """A config.json that is not a LLaMA causal LM is refused in one line."""
    if config is None:
        return
    model_type = config.get("model_type")
    if model_type is not None and model_type != "llama":
        raise CheckpointError(f"{path}: config.json describes a {model_type!r} model; only LLaMA (model_type "
                              "'llama') is converted")
    arch = config.get("architectures")
    if arch is not None and (not isinstance(arch, list) or "LlamaForCausalLM" not in arch):
        raise CheckpointError(f"{path}: config.json architectures {arch!r} do not include LlamaForCausalLM")
    if config.get("tie_word_embeddings"):
        raise CheckpointError(f"{path}: tied word embeddings are not supported "
                              "(upstream's LLaMA has an untied lm_head)")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{path}: hidden_act {act!r} is not supported (LLaMA uses silu)")


def _float_dtype(sd):
    dt = np.asarray(sd["model.embed_tokens.weight"].numpy() if hasattr(sd["model.embed_tokens.weight"], "numpy")
                    else sd["model.embed_tokens.weight"]).dtype
    return {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32"}.get(dt, "float32")


def resolve_llama(shapes, config, model=None, overrides=None, path="checkpoint"):
    """``(name, overrides)`` of the LLaMA that fits ``{torch_key: shape}`` and config.json."""
    given = dict(config or {})
    given.update({k: v for k, v in (overrides or {}).items() if k in ("num_attention_heads", "rope_theta",
                                                                     "rms_norm_eps", "max_position_embeddings")})
    try:
        name, inferred = infer_llama_config(shapes, given)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if model:
        if not is_model(model):
            raise CheckpointError(f"unknown model {model!r}; available: {', '.join(list_models('all'))}")
        if not is_language_model(model):
            raise CheckpointError(f"{path}: a LLaMA checkpoint cannot be converted as {model!r}")
        full = dict(LLAMA_DEFAULTS[name], **inferred)
        from ..models.registry import overrides_from_defaults
        name, inferred = model, overrides_from_defaults(LlamaForCausalLM, LLAMA_DEFAULTS[model], full)
    inferred.update(overrides or {})
    return name, inferred


def build_llama(name, overrides, lazy=False):
    """The registered LLaMA; ``lazy`` skips weight initialisation (layout and loading only)."""
    try:
        if lazy:
            from mindspore.nn.utils import no_init_parameters
            with no_init_parameters():
                return create_model(name, **overrides)
        return create_model(name, **overrides)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"cannot build {name} with {overrides}: {str(e).splitlines()[0]}") from None


def _check_inv_freq(net, sd, path):
    """Every layer's ``rotary_emb.inv_freq``: absent (newer transformers drop it) -> filled with what
    the model computes; present -> must agree with it (float32 ``pow`` may differ by an ulp across
    libraries, a half-precision copy by its rounding), and is kept bit for bit."""
    cfg = net.config
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    computed = rotary_inv_freq(head_dim, cfg["rope_theta"])
    sd = OrderedDict(sd)
    for i in range(cfg["num_hidden_layers"]):
        key = INV_FREQ.format(i)
        if key not in sd:
            sd[key] = computed.astype(np.dtype(cfg["dtype"]) if cfg["dtype"] != "bfloat16" else np.float32)
            continue
        value = sd[key]
        value = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        if value.shape != computed.shape:
            continue  # reported as a shape mismatch by the mapping
        rtol = 2e-6 if value.dtype == np.float32 or value.dtype == np.float64 else 2e-3
        if not np.allclose(value.astype(np.float64), computed.astype(np.float64), rtol=rtol, atol=0):
            raise CheckpointError(f"{path}: {key} differs from the model's rotary frequencies (rope_theta "
                                  f"{cfg['rope_theta']}, head_dim {head_dim}): max relative difference "
                                  f"{float(np.max(np.abs(value / computed - 1))):.2e}")
        sd[key] = value
    return sd


def load_hf_params(path, model=None, overrides=None, key=None, loaded=None):
    """Read and check an HF LLaMA: ``(name, overrides, net (lazy), ms_params, config)``."""
    sd, config = read_hf_checkpoint(path, key, loaded)
    check_hf_config(config, path)
    if not is_llama_layout(sd):
        raise CheckpointError(f"{path}: not a LLaMA state dict (no model.embed_tokens.weight / model.layers.0)")
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    overrides = dict(overrides or {})
    if _float_dtype(sd) != "float32":
        overrides.setdefault("dtype", _float_dtype(sd))
    name, overrides = resolve_llama(shapes, config, model, overrides, path)
    net = build_llama(name, overrides, lazy=True)
    sd = _check_inv_freq(net, sd, path)
    params = torch_to_ms(net, sd, what=f"{path} (as {name})")
    return name, overrides, net, params, config


def hf_to_mindspore(input_path: str, output_path: str, model: str | None = None, overrides: dict | None = None,
                    key: str | None = None, force: bool = False, loaded: Any = None) -> tuple[str, dict, int]:
    """HF LLaMA (folder or file) -> ``output_path`` (.ckpt) and its ``.config.json``.
    Returns ``(name, overrides, n_tensors)``."""
    side = sidecar_path(output_path)
    for out in (output_path, side):
        if os.path.exists(out) and not force:
            raise CheckpointError(f"{out} exists; pass --force to overwrite")
    directory = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(directory):
        raise CheckpointError(f"output directory {directory} does not exist")
    name, overrides, net, params, config = load_hf_params(input_path, model, overrides, key, loaded)
    record = sidecar_record(name, overrides, config if config is not None else hf_config_for(net))
    save_ms_checkpoint(params, output_path)
    try:
        write_json(side, record)
    except BaseException:
        os.remove(output_path)
        raise
    return name, overrides, len(params)


# --------------------------------------------------------------------------------------- writing
def hf_config_for(net, base=None):
    """config.json for ``net``: ``base`` (the original config.json) updated with the sizes."""
    cfg = net.config
    out = dict(base or {})
    out.update({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"], "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "max_position_embeddings": cfg["max_position_embeddings"], "rms_norm_eps": cfg["rms_norm_eps"],
        "pad_token_id": cfg["pad_token_id"], "bos_token_id": cfg["bos_token_id"],
        "eos_token_id": cfg["eos_token_id"], "tie_word_embeddings": False,
        "torch_dtype": cfg["dtype"],
    })
    out.setdefault("initializer_range", 0.02)
    out.setdefault("use_cache", False)
    if cfg["rope_theta"] != 10000.0 or "rope_theta" in out:
        out["rope_theta"] = cfg["rope_theta"]
    return dict(sorted(out.items()))


def sidecar_record(name, overrides, hf_config):
    """The ``X.config.json`` written next to a LLaMA ``X.ckpt`` (by convert.py and train.py): the
    registered model and its constructor overrides, which rebuild it, and an HF config.json."""
    return {"format": "slab_ms.llama/1", "model": name, "overrides": dict(overrides), "hf_config": hf_config}


def read_sidecar(ckpt_path, config_path=None):
    """The ``X.config.json`` record of a converted checkpoint, or None when there is none."""
    path = config_path or sidecar_path(ckpt_path)
    if not os.path.isfile(path):
        if config_path:
            raise ConfigError(f"{config_path}: no such config file")
        return None
    record = read_json(path, "checkpoint config")
    if record.get("format") != "slab_ms.llama/1" or not isinstance(record.get("model"), str) \
            or not isinstance(record.get("overrides", {}), dict):
        raise CheckpointError(f"{path}: not a slab_ms LLaMA checkpoint config")
    return record


def resolve_ms_llama(params, ckpt_path, model=None, overrides=None, config_path=None):
    """``(name, overrides, hf_config or None)`` of a MindSpore LLaMA checkpoint: from its sidecar
    config, else inferred from the parameter shapes (inv_freq gives the head size)."""
    record = read_sidecar(ckpt_path, config_path)
    if record is not None and not model:
        name, found = record["model"], dict(record.get("overrides", {}))
        hf_config = record.get("hf_config")
    else:
        shapes = {ms_to_torch_name(k): tuple(np.shape(v)) for k, v in params.items()}
        hf_config = record.get("hf_config") if record else None
        name, found = resolve_llama(shapes, hf_config, model, None, ckpt_path)
    if not is_model(name) or not is_language_model(name):
        raise CheckpointError(f"{ckpt_path}: config names {name!r}, not a registered language model")
    found.pop("dtype", None)
    dtype = _float_dtype({"model.embed_tokens.weight": params["model.embed_tokens.weight"]})
    if dtype != "float32":
        found["dtype"] = dtype
    found.update(overrides or {})
    return name, found, hf_config


def _write_weights(sd, path, fmt):
    if fmt == "safetensors":
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v) if np.ndim(v) else np.asarray(v) for k, v in sd.items()}, path,
                  metadata={"format": "pt"})
    else:
        write_torch_state_dict(path, sd)


def mindspore_to_hf(input_path: str, output_path: str, model: str | None = None, overrides: dict | None = None,
                    force: bool = False, fmt: str = "safetensors", config_path: str | None = None,
                    loaded: Any = None) -> tuple[str, dict, int]:
    """MindSpore LLaMA ``.ckpt`` -> HF folder (or a single ``.safetensors``/``.bin`` file when
    ``output_path`` ends so). Returns ``(name, overrides, n_tensors)``."""
    if fmt not in ("safetensors", "bin"):
        raise ConfigError(f"--hf-format must be 'safetensors' or 'bin', got {fmt!r}")
    output_path = os.fspath(output_path)
    single = output_path.endswith((".safetensors", ".bin", ".pth"))
    if single:
        fmt = "safetensors" if output_path.endswith(".safetensors") else "bin"
    if os.path.exists(output_path) and not force:
        raise CheckpointError(f"{output_path} exists; pass --force to overwrite")
    parent = os.path.dirname(os.path.abspath(output_path))
    if not os.path.isdir(parent):
        raise CheckpointError(f"output directory {parent} does not exist")
    params = model_params(loaded if loaded is not None else read_ms_checkpoint(input_path))
    if "model.embed_tokens.weight" not in params:
        raise CheckpointError(f"{input_path}: not a LLaMA checkpoint (no model.embed_tokens.weight)")
    name, overrides, hf_config = resolve_ms_llama(params, input_path, model, overrides, config_path)
    net = build_llama(name, overrides, lazy=True)
    if net.config["folded"] == "all":
        raise CheckpointError(f"{input_path}: the final norm is folded into lm_head (lm_head.bias), which "
                              "upstream's LLaMA cannot load; convert the unfused checkpoint")
    sd = ms_to_torch(net, params, what=f"{input_path} (as {name})")
    if single:
        with atomic_write(output_path, suffix=os.path.splitext(output_path)[1]) as tmp:
            _write_weights(sd, tmp, fmt)
        return name, overrides, len(sd)
    tmp_dir = tempfile.mkdtemp(prefix=".tmp-hf-", dir=parent)
    try:
        _write_weights(sd, os.path.join(tmp_dir, SAFETENSORS if fmt == "safetensors" else BIN), fmt)
        config = hf_config_for(net, hf_config)
        write_json(os.path.join(tmp_dir, "config.json"), config)
        generation = {"_from_model_config": True, "bos_token_id": config["bos_token_id"],
                      "eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"]}
        write_json(os.path.join(tmp_dir, "generation_config.json"), generation)
        if os.path.exists(output_path):   # --force: swap the old output out only once the new one is complete
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.rmdir(old)
            os.replace(output_path, old)
            os.replace(tmp_dir, output_path)
            shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)
        else:
            os.replace(tmp_dir, output_path)
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return name, overrides, len(sd)


# --------------------------------------------------------------------------------------- loading
def load_llama(path: str, config: str | None = None, dtype: str | None = None, **overrides: Any) -> nn.Cell:
    """A loaded LLaMA from a converted ``X.ckpt`` (its ``X.config.json``, or ``config``), an HF
    folder, or an HF weights file (converted in memory). ``dtype`` overrides the checkpoint's."""
    path = os.fspath(path)
    if dtype is not None:
        overrides["dtype"] = dtype
    if os.path.isdir(path) or not path.endswith(".ckpt"):
        name, found, _, params, _ = load_hf_params(path, overrides=overrides)
    else:
        params = model_params(read_ms_checkpoint(path))
        if "model.embed_tokens.weight" not in params:
            raise CheckpointError(f"{path}: not a LLaMA checkpoint (no model.embed_tokens.weight)")
        name, found, _ = resolve_ms_llama(params, path, None, overrides, config)
    net = build_llama(name, found, lazy=True)   # every parameter is then set from the checkpoint
    load_param_dict(net, params, what=path)
    net.set_train(False)
    return net


def verify_llama(torch_path: str, ms_path: str, seed: int = 0) -> tuple[float, float]:
    """``(max|diff|, relative)`` of the PyTorch reference (``torch_ref.llama``) on the HF weights
    and the MindSpore model (GRAPH_MODE) on the converted checkpoint: eval logits of 2 random
    sequences of 16 tokens, the second with 4 padded positions."""
    import mindspore as ms
    try:
        import torch
        from .torch_ref import llama as ref_llama
    except ImportError as e:
        raise CheckpointError(f"--verify needs torch (pip install 'slab-ms[verify]'): {e}") from None
    net = load_llama(ms_path) if ms_path.endswith(".ckpt") else load_llama(torch_path)
    cfg = dict(net.config)
    if cfg["folded"] != "none" or cfg["dtype"] != "float32":
        raise CheckpointError("--verify compares unfolded float32 models only")
    sd, _ = read_hf_checkpoint(torch_path)
    ref = ref_llama.LlamaForCausalLM(**{k: v for k, v in cfg.items() if k in ref_llama.DEFAULTS})
    state = {k: torch.from_numpy(np.array(v.numpy() if hasattr(v, "numpy") else v)) for k, v in sd.items()}
    for k, v in ref.state_dict().items():
        if k.endswith("rotary_emb.inv_freq"):
            state.setdefault(k, v)   # newer transformers do not save it
    try:
        ref.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{torch_path}: the PyTorch reference does not load it ({first})") from None
    ref.eval()
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg["vocab_size"], size=(2, 16))
    mask = np.ones_like(ids)
    mask[1, -4:] = 0
    ids[1, -4:] = cfg["pad_token_id"]
    with torch.no_grad():
        expected = ref(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    got = net(ms.Tensor(ids.astype(np.int32)), ms.Tensor(mask.astype(np.int32))).asnumpy()
    diff = float(np.abs(got - expected).max())
    return diff, diff / max(1.0, float(np.abs(expected).max()))
