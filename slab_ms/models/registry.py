"""Model registry: ``@register_model`` constructors that only fill in sizes (timm/mindcv style)."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from mindspore import nn

from ..errors import ConfigError

_MODELS = {}
_INFERERS = []


def register_inferer(fn):
    """Register ``fn(shapes) -> (name, overrides) | None`` that recognises a family's PyTorch layout."""
    _INFERERS.append(fn)
    return fn


def overrides_from_defaults(cls, registered, cfg):
    """The entries of ``cfg`` (an inferred architecture) that differ from what the registered
    constructor builds by default: ``cls``'s own defaults updated by ``registered``. Lists and
    tuples of equal items compare equal."""
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    defaults.update(registered)
    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return {k: v for k, v in cfg.items() if as_tuple(v) != as_tuple(defaults.get(k))}


def infer_model(shapes):
    """``(name, overrides)`` of the registered family whose layout matches ``{torch_key: shape}``."""
    for fn in _INFERERS:
        found = fn(shapes)
        if found is not None:
            return found
    return None


def build_registered(cls, defaults, pretrained, kwargs):
    """``cls(**defaults updated by kwargs)`` for a registered constructor: refuses ``pretrained``
    (slab_ms downloads nothing) and accepts mindcv's ``in_channels`` for ``in_chans``.

    ``features_only=True`` (with optional ``out_indices``) returns the model wrapped in
    :class:`slab_ms.models.features.FeatureExtractor`, as mindcv's ``create_model`` does."""
    kwargs = dict(kwargs)
    if pretrained:
        raise ValueError("pretrained weights are not downloaded by slab_ms: convert an official checkpoint "
                         "with convert.py and load it with slab_ms.load_checkpoint")
    if "in_channels" in kwargs:
        kwargs["in_chans"] = kwargs.pop("in_channels")
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is not None and not features_only:
        raise ConfigError("out_indices needs features_only=True")
    model = cls(**dict(defaults, **kwargs))
    if features_only:
        from .features import FeatureExtractor
        model = FeatureExtractor(model, out_indices)
    return model


def register_model(fn: Callable[..., nn.Cell]) -> Callable[..., nn.Cell]:
    _MODELS[fn.__name__] = fn
    return fn


_DETECTION_BACKBONES = set()


def register_detection_backbone(fn):
    """Register a detection backbone (``models/swin_det.py``): built by ``create_model`` like any
    model, listed by ``list_models("detection")`` rather than with the classifiers."""
    _DETECTION_BACKBONES.add(fn.__name__)
    return register_model(fn)


_LANGUAGE_MODELS = set()


def register_language_model(fn):
    """Register a language model (``models/llama.py``): built by ``create_model`` like any model,
    listed by ``list_models("language")`` rather than with the classifiers."""
    _LANGUAGE_MODELS.add(fn.__name__)
    return register_model(fn)


def list_models(task: str = "classification") -> list[str]:
    """Registered names: the classification models (default), ``"detection"`` backbones, or ``"all"``."""
    if task == "all":
        return sorted(_MODELS)
    if task == "detection":
        return sorted(_DETECTION_BACKBONES)
    if task == "language":
        return sorted(_LANGUAGE_MODELS)
    if task == "classification":
        return sorted(set(_MODELS) - _DETECTION_BACKBONES - _LANGUAGE_MODELS)
    raise ValueError(f"task must be 'classification', 'detection', 'language' or 'all', got {task!r}")


def is_model(name: str) -> bool:
    return name in _MODELS


def unknown_model_error(name: str) -> ConfigError:
    """The error for a name that is not registered: the closest registered names, then every name by
    task. ``list_models()`` is the classification models only; the detection backbones and the
    language models are registered too (``list_models("all")``), so all three groups are named."""
    import difflib
    near = difflib.get_close_matches(str(name), sorted(_MODELS), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    groups = [("classification", "classification models", "list_models()"),
              ("detection", "detection backbones", "list_models('detection')"),
              ("language", "language models", "list_models('language')")]
    listed = "; ".join(f"{len(list_models(task))} {what} ({call}): {', '.join(list_models(task))}"
                       for task, what, call in groups if list_models(task))
    return ConfigError(f"unknown model {name!r}{hint}; registered: {listed}")


def create_model(name: str, **overrides: Any) -> nn.Cell:
    """Build a registered model; keyword overrides (``embed_dim``, ``depths``, ``num_heads``,
    ``img_size``, ``num_classes``, ``drop_path_rate``, ``attn_type``, ``window_size``, ...) replace
    the registered defaults."""
    if name not in _MODELS:
        raise unknown_model_error(name)
    try:
        return _MODELS[name](**overrides)
    except (TypeError, ValueError) as e:  # an override the family does not take, or a value it refuses
        raise ConfigError(f"bad arguments for {name}: {e}") from None


def register_with_mindcv():
    """Make ``mindcv.create_model(name)`` find the slab_ms models."""
    try:
        from mindcv.models import registry as mindcv_registry
    except Exception:  # mindcv missing or broken: slab_ms still works on its own
        return False
    for name, fn in _MODELS.items():
        if name not in mindcv_registry._model_entrypoints:
            mindcv_registry.register_model(fn)
    return True


def parse_model_overrides(items):
    """``["embed_dim=16", "depths=[2,2,2,2]", "attn_type=LLSS"]`` -> constructor overrides (values
    parsed as Python literals, else kept as strings); a malformed item is a ConfigError."""
    import ast
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as attn_type=LLSS
    return out
