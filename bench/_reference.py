"""The PyTorch reference for the PyTorch-only benchmark processes, loaded without MindSpore.

``import slab_ms.convert.torch_ref`` would run ``slab_ms/__init__.py``, which loads MindSpore (its
libraries and memory would then count in a PyTorch measurement). This finds the installed package
without executing it (``importlib.util.find_spec`` of a top-level name only locates it) and loads its
``convert/torch_ref`` folder as a standalone top-level package named ``torch_ref``; the reference's
modules use relative imports only, so ``torch_ref.llama`` and the others load from there too.
Imports no framework itself.
"""
import importlib.util
import os
import sys

NAME = "torch_ref"


def reference_folder():
    """The folder of ``slab_ms/convert/torch_ref`` in the installed ``slab_ms``."""
    spec = importlib.util.find_spec("slab_ms")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("slab_ms is not installed in this interpreter (pip install -e .)")
    for location in spec.submodule_search_locations:
        folder = os.path.join(location, "convert", NAME)
        if os.path.isfile(os.path.join(folder, "__init__.py")):
            return folder
    raise ImportError(f"no convert/{NAME} in slab_ms at {list(spec.submodule_search_locations)}")


def load_torch_ref():
    """The reference package (``create_model`` and the family modules; ``torch_ref.llama`` is
    importable once this has run). Where ``slab_ms.convert.torch_ref`` is already loaded, that copy."""
    for loaded in ("slab_ms.convert." + NAME, NAME):
        if loaded in sys.modules:
            return sys.modules[loaded]
    folder = reference_folder()
    spec = importlib.util.spec_from_file_location(NAME, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[NAME]
        raise
    return module


def load_reference_llama():
    """``torch_ref.llama`` (the PyTorch PRepBN LLaMA), loaded as :func:`load_torch_ref` does."""
    package = load_torch_ref()
    return importlib.import_module(package.__name__ + ".llama")


def check_no_mindspore():
    """Raise when MindSpore has loaded in this process (a PyTorch-only measurement would count it)."""
    if "mindspore" in sys.modules:
        raise RuntimeError("MindSpore loaded in a PyTorch-only benchmark process")
