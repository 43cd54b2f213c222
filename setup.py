"""Installs ``softsae_lens_autoload.pth`` next to the package (everything else is in pyproject.toml).

The .pth makes ``architecture="soft"`` known to SAELens whenever SAELens is imported (see
softsae_lens_autoload.py). setuptools has no declarative way to put a file at the root of
site-packages, so build_py copies it there: into the wheel's root for a normal install, and into
the editable wheel (whose root is ``install_lib`` while setuptools builds it) for ``pip install -e``.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "softsae_lens_autoload.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        root = self.build_lib
        if getattr(self, "editable_mode", False):
            root = self.get_finalized_command("install").install_lib
        self.copy_file(str(Path(__file__).parent / PTH), str(Path(root, PTH)), preserve_mode=False)


setup(cmdclass={"build_py": BuildPyWithPth})
