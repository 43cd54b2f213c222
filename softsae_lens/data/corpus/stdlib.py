"""Real text every Python installation carries: the standard library's documentation and source.

* :func:`stdlib_doc_documents`: ``pydoc``'s plain-text rendering of every public standard
  library module that imports cleanly (``sys.stdlib_module_names``), one document per module.
  Importing ~200 modules can print, hang, open a browser (``antigravity``) or crash, so the
  rendering runs in a separate, site-less interpreter with no stdin, output thrown away, a
  fixed hash seed and a stall timeout; modules that fail are skipped and counted. The result
  is cached on disk (keyed by the interpreter), so the ~1 minute of rendering happens once.
* :func:`stdlib_source_documents`: the standard library's own ``.py`` files, tests, codec
  tables, the pydoc topic dump and build-configuration files excluded, one document per file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from softsae_lens.cache import cache_root as default_cache_root

__all__ = [
    "STDLIB_DOC_SKIPPED",
    "render_stdlib_docs",
    "stdlib_doc_documents",
    "stdlib_doc_modules",
    "stdlib_source_documents",
]

logger = logging.getLogger(__name__)

# Modules whose import does something beyond defining names: antigravity opens a web browser,
# this prints the Zen of Python (and has no documentation of its own).
STDLIB_DOC_SKIPPED = frozenset({"antigravity", "this"})
# Bump when the rendering or its clean-up changes, so cached text is rebuilt.
_DOC_FORMAT_VERSION = 1

# Sections of pydoc's plain-text page that depend on the machine rather than the module:
# FILE is the install path; DATA holds reprs of module globals (os.environ, sys.path
# entries, install prefixes, set orderings).
_MACHINE_SECTIONS = re.compile(r"^(?:FILE|DATA)\n(?:(?: {4}.*)?\n)*", re.MULTILINE)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

# Runs in a fresh interpreter started with -S -s (no site-packages, so setuptools' distutils
# shim and other installed packages cannot leak in). One JSON line per module, flushed at once,
# lets the parent see progress and resume after a module that hangs or kills the process.
_WORKER = r"""
import importlib, json, os, sys, warnings
warnings.simplefilter("ignore")
import pydoc
out_path, names = sys.argv[1], sys.argv[2:]
sink = open(os.devnull, "w")
with open(out_path, "a", encoding="utf-8") as out:
    for name in names:
        sys.stdout = sys.stderr = sink
        try:
            text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
            record = {"module": name, "text": text}
        except BaseException as exc:
            record = {"module": name, "error": (type(exc).__name__ + ": " + str(exc))[:300]}
        out.write(json.dumps(record) + "\n")
        out.flush()
"""


def stdlib_doc_modules() -> list[str]:
    """Names of the public standard library modules to document, sorted."""
    return sorted(
        name
        for name in sys.stdlib_module_names
        if not name.startswith("_") and name not in STDLIB_DOC_SKIPPED
    )


def _clean_page(text: str) -> str:
    # Default arguments can show the interpreter's path (platform.architecture).
    text = text.replace(sys.executable, "python3")
    return _ADDRESS.sub("", _MACHINE_SECTIONS.sub("", text)).rstrip()


def _worker_env(search_path: Sequence[str | Path]) -> dict[str, str]:
    # Built from scratch: the rendered pages must not depend on (or leak) the caller's
    # environment (cgi shows os.environ as a default argument), and a fixed hash seed keeps
    # set and dict reprs in a stable order.
    extra = {"PYTHONPATH": os.pathsep.join(map(str, search_path))} if search_path else {}
    return {
        **extra,
        "PATH": os.defpath,
        "HOME": "/nonexistent",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONIOENCODING": "utf-8",
        "BROWSER": "true",
        "TERM": "dumb",
    }


def _read_records(path: Path, offset: int) -> tuple[list[dict], int]:
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind("\n") + 1]
    records = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return records, offset + len(complete.encode("utf-8"))


def render_stdlib_docs(
    modules: Sequence[str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    search_path: Sequence[str | Path] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """Render pydoc's plain-text page of each module in a separate interpreter.

    Args:
        modules: module names (default :func:`stdlib_doc_modules`).
        timeout: seconds one module may take (import plus rendering) before the worker is
            killed, the module recorded as failed, and a new worker started after it.
        progress: show a tqdm progress bar.
        search_path: folders to put on the worker's ``PYTHONPATH``, to document modules
            outside the standard library (site-packages is never on it).

    Returns:
        ``(pages, failures)``: module name -> cleaned page text (FILE and DATA sections and
        object addresses removed), and module name -> reason for every module left out.
    """
    from tqdm.auto import tqdm

    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    pending = list(stdlib_doc_modules() if modules is None else modules)
    pages: dict[str, str] = {}
    failures: dict[str, str] = {}
    bar = tqdm(total=len(pending), desc="pydoc: rendering stdlib", disable=not progress)
    with tempfile.TemporaryDirectory(prefix="softsae-pydoc-") as tmp:
        attempt = 0
        while pending:
            out_path = Path(tmp) / f"pages-{attempt}.jsonl"
            out_path.touch()
            attempt += 1
            proc = subprocess.Popen(
                [sys.executable, "-S", "-s", "-c", _WORKER, str(out_path), *pending],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp,
                env=_worker_env(search_path),
                start_new_session=True,
            )
            offset, last_progress = 0, time.monotonic()
            while True:
                finished = proc.poll() is not None
                records, offset = _read_records(out_path, offset)
                for record in records:
                    name = record["module"]
                    if "text" in record:
                        pages[name] = _clean_page(record["text"])
                    else:
                        failures[name] = record["error"]
                    pending.remove(name)
                    bar.update(1)
                if records:
                    last_progress = time.monotonic()
                if finished or not pending:
                    break
                if time.monotonic() - last_progress > timeout:
                    proc.kill()
                    proc.wait()
                    finished = True
                    failures[pending.pop(0)] = f"timed out after {timeout:.0f} s"
                    bar.update(1)
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if pending and proc.returncode not in (0, -9):
                # The worker died inside the first pending module (a crash on import).
                failures[pending.pop(0)] = f"worker exited with code {proc.returncode}"
                bar.update(1)
    bar.close()
    return pages, failures


def _doc_cache_path(root: Path) -> Path:
    impl = sys.implementation.name
    version = ".".join(map(str, sys.version_info[:3]))
    return root / "corpus" / f"stdlib-doc-{impl}-{version}-v{_DOC_FORMAT_VERSION}.json"


def stdlib_doc_documents(
    cache_root: Path | str | None = None, timeout: float = 60.0, progress: bool = True
) -> list[str]:
    """pydoc pages of the standard library, rendered once per interpreter and then cached.

    The first call renders (see :func:`render_stdlib_docs`; about a minute) and writes
    ``<cache_root>/corpus/stdlib-doc-<python>-v<N>.json``, with the modules that failed and
    why; later calls read that file. Pages come back sorted by module name, empty ones dropped.

    Args:
        cache_root: default :func:`softsae_lens.cache.cache_root`.
        timeout: per-module stall timeout for the rendering, in seconds.
        progress: show a progress bar while rendering.
    """
    path = _doc_cache_path(Path(cache_root) if cache_root is not None else default_cache_root())
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        pages = cached["pages"]
    except (OSError, ValueError, KeyError):
        pages, failures = render_stdlib_docs(timeout=timeout, progress=progress)
        total = len(pages) + len(failures)
        logger.info("pydoc rendered %d of %d stdlib modules", len(pages), total)
        if progress:
            print(
                f"[corpus] pydoc rendered {len(pages)} of {total} stdlib modules "
                f"({len(failures)} skipped: {', '.join(sorted(failures)) or 'none'})",
                file=sys.stderr,
                flush=True,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format_version": _DOC_FORMAT_VERSION,
            "python": sys.version,
            "pages": pages,
            "failures": failures,
        }
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    return [pages[name] for name in sorted(pages) if pages[name].strip()]


# Top-level entries of the stdlib folder that are not prose or code a person wrote for
# reading: the regression tests, codec lookup tables, the generated pydoc topic dump (the
# "pydoc" source already has it), build configuration, and whatever pip installed.
_SOURCE_EXCLUDED_TOP = frozenset(
    {"test", "encodings", "pydoc_data", "site-packages", "dist-packages", "__pycache__"}
)
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


def _excluded_source(rel: Path) -> bool:
    top = rel.parts[0]
    if top in _SOURCE_EXCLUDED_TOP or top.startswith(("config-", "_sysconfigdata")):
        return True
    if any(part in _TEST_DIRS for part in rel.parts[:-1]):
        return True
    return rel.name.startswith("test_")


def stdlib_source_documents(root: Path | str | None = None) -> list[str]:
    """Text of the standard library's ``.py`` files, one document per file, sorted by path.

    Args:
        root: the standard library folder (default ``sysconfig.get_paths()["stdlib"]``).
            Tests (``test/``, ``tests/``, ``idle_test/``, ``test_*.py``), ``encodings/``
            (codec tables), ``pydoc_data/``, ``config-*`` and ``_sysconfigdata*`` (build
            settings of this machine) and installed packages are left out.
    """
    base = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        return []
    paths: list[Path] = []
    for folder, dirs, files in os.walk(base):
        rel_folder = Path(folder).relative_to(base)
        # Prune in place so os.walk never descends into site-packages or test trees.
        dirs[:] = sorted(d for d in dirs if not _excluded_source(rel_folder / d / "x.py"))
        paths.extend(
            Path(folder) / name
            for name in files
            if name.endswith(".py") and not _excluded_source(rel_folder / name)
        )
    return [path.read_text(encoding="utf-8", errors="replace") for path in sorted(paths)]
