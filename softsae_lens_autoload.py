"""Makes ``architecture="soft"`` known to SAELens as soon as SAELens is imported.

SAELens has no plugin discovery: a saved SoftSAE loads only after ``import softsae_lens``
registered "soft", and without it ``SAE.from_pretrained`` / ``SAE.load_from_disk`` stop with
``KeyError: 'soft'``. Installing softsae_lens puts ``softsae_lens_autoload.pth`` in
site-packages; Python's ``site`` runs its one line at start-up, which imports this module.

What it does at start-up: put one finder at the front of ``sys.meta_path`` (no other import,
no other work). The finder answers only for ``sae_lens``, once: it lets the normal finders
locate SAELens and, after SAELens's own ``__init__`` has run, imports ``softsae_lens``, which
registers "soft" through SAELens's public registry. SAELens itself is not changed. A process
that never imports SAELens pays for one module import and a string comparison per import.

Opt out with the environment variable ``SOFTSAE_LENS_AUTOLOAD=0``. If ``softsae_lens`` fails to
import, SAELens still imports and a warning says why.

Must not depend on anything outside the standard library, and must not import ``softsae_lens``
or ``sae_lens`` itself.
"""

from __future__ import annotations

import os
import sys
import warnings  # already imported by Python at start-up, like os and sys

ENV_VAR = "SOFTSAE_LENS_AUTOLOAD"
_TARGET = "sae_lens"


class _RegisterAfterLoad:
    """Wraps SAELens's loader: runs it, then imports softsae_lens."""

    def __init__(self, loader: object):
        self._loader = loader

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)

    def create_module(self, spec: object) -> object:
        return self._loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        # Hand the module its real loader back: importlib.resources and reload() read it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _register()


class SaeLensImportHook:
    """A ``sys.meta_path`` finder that answers only for ``sae_lens``, and only once."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != _TARGET:
            return None
        uninstall()
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = None if find_spec is None else find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def _register() -> None:
    if "softsae_lens" in sys.modules:
        return  # softsae_lens is importing SAELens itself and registers "soft" when done
    try:
        import softsae_lens  # noqa: F401  (importing registers "soft")
    except Exception as err:  # an install problem must not break `import sae_lens`
        warnings.warn(
            f"softsae_lens could not register the 'soft' architecture with SAELens ({type(err).__name__}: "
            f"{err}); 'soft' SAEs will not load. Set {ENV_VAR}=0 to stop trying.",
            RuntimeWarning,
            stacklevel=2,
        )


def enabled() -> bool:
    """False when the environment opts out (``SOFTSAE_LENS_AUTOLOAD`` = 0/false/no/off)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def install() -> None:
    """Put the hook at the front of ``sys.meta_path`` unless SAELens is already imported, the
    hook is already there, or the environment opts out."""
    if not enabled() or _TARGET in sys.modules:
        return
    if not any(isinstance(f, SaeLensImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, SaeLensImportHook())


def uninstall() -> None:
    """Remove the hook from ``sys.meta_path`` (a no-op if it is not there)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, SaeLensImportHook)]
