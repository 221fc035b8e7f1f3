"""Build hook (the metadata is in pyproject.toml): the wheel carries the checkout's ``configs/*.yaml``
as ``slab_ms/configs/``, so an installed package finds its configs by name (``slab-train --config
slab_swin_t``) outside the checkout. The YAML files live in one place, ``configs/``; inside the
package ``slab_ms.engine.config.config_dirs`` looks in ``slab_ms/configs`` (a wheel) and then in
the checkout's ``configs/`` (``python train.py``, ``pip install -e .``)."""
import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):   # an editable install reads the checkout's configs/
            return
        target = os.path.join(self.build_lib, "slab_ms", "configs")
        self.mkpath(target)
        for path in sorted(glob.glob(os.path.join(HERE, "configs", "*.yaml"))):
            self.copy_file(path, os.path.join(target, os.path.basename(path)))


setup(cmdclass={"build_py": BuildPyWithConfigs})
