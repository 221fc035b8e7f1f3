"""Rewrite a MindIR written by MindSpore 2.10 into the form MindSpore Lite 2.0 builds
(``export.py --mindir-compat 2.0``)."""
from .errors import CompatError
from .rewrite import convert_file, rewrite

__all__ = ["CompatError", "convert_file", "rewrite"]
