"""Deployment: export a (fused) model to MindIR or ONNX (``export.py``), rewrite a MindIR for
MindSpore Lite 2.0 (``mindir/``), and run it through Lite's C++ runner, Lite's Python API or
MindSpore's GraphCell (``runtimes.py``, ``predict.py``; ``infer.py`` is the CLI)."""
from .export import (PREPROCESS_KEYS, build_for_export, check_export_request, class_names, export_model,
                     preprocessing, verify_export)
from .predict import classify, decode_batch, list_images, load_meta, make_pipeline, preprocess, softmax
from .runtimes import (RUNTIMES, GraphCellRunner, LiteCppRunner, LiteRunner, LiteRunnerError, check_model_file,
                       default_lite_runner, default_lite_threads, is_lite_compatible, make_runner)

__all__ = ["PREPROCESS_KEYS", "RUNTIMES", "GraphCellRunner", "LiteCppRunner", "LiteRunner", "LiteRunnerError",
           "build_for_export", "check_export_request", "check_model_file", "class_names", "classify", "decode_batch",
           "default_lite_runner", "default_lite_threads", "export_model", "is_lite_compatible", "list_images",
           "load_meta", "make_pipeline", "make_runner", "preprocess", "preprocessing", "softmax", "verify_export"]
