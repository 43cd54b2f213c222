"""Imports point down only: every module's imports (function-level ones included), read with
``ast``, against the package's layers."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "softsae_lens"

# Each unit (a top-level module or subpackage of softsae_lens) with its layer: a module may
# import its own unit and units of lower layers only. Units of one layer are independent.
LAYERS: list[set[str]] = [
    {"soft_topk_threshold"},  # the operator's threshold solve
    {"soft_topk"},  # the operator
    # the architecture: configs, the classes' shared parts, the training sample behind k_scale
    {"soft_config", "soft_encoder", "soft_reservoir"},
    {"soft_k_budget"},  # the architecture: the k budget of training
    {"soft_sae"},  # the architecture: the inference and training classes
    {"registration", "hub"},  # SAELens's registry, the Hugging Face layout
    {"cache", "flags"},  # where built files are cached; command lines from config dataclasses
    {"data", "models"},  # activations and text on disk; language models
    {"analysis"},  # per-token records, statistics, views
    {"evals"},  # held-out metrics
    {"training"},  # run length, checkpoints, distributed, training on arrays
    {"dashboards", "convert"},  # per-latent pages; the paper's checkpoints
    {""},  # the package itself (importing it registers "soft")
    {"experiments"},  # the demo, the sweep, ground truth, MiniLM, SAEBench
    {"train", "analyze", "train_activations", "demo"},  # the CLIs, at the top
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
CLI_RANK = RANK["train"]
# Command-line entry points inside a library unit: they sit with the CLIs.
CLI_MODULES = {"softsae_lens.dashboards.__main__", "softsae_lens.convert.__main__"}
CLI_MODULES |= {"softsae_lens.convert.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(module: str) -> int:
    return CLI_RANK if module in CLI_MODULES else RANK[_unit(module)]


def _imports(module: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``module``, relative ones resolved;
    ``from softsae_lens import x`` counts as importing ``softsae_lens.x`` when that is a module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [
                (node.lineno, f"{base}.{alias.name}")
                for alias in node.names
                if f"{base}.{alias.name}" in MODULES
            ]
    return found


def _internal(module: str) -> list[tuple[int, str]]:
    return [
        (line, target)
        for line, target in _imports(module)
        if target == "softsae_lens" or target.startswith("softsae_lens.")
    ]


def test_every_module_has_a_layer():
    unknown = sorted({_unit(m) for m in MODULES} - set(RANK))
    assert not unknown, f"units of softsae_lens with no layer in tests/test_layers.py: {unknown}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    rank, unit = _rank(module), _unit(module)
    upward = []
    for line, target in _internal(module):
        target_unit = _unit(target)
        if target_unit == unit and not (target in CLI_MODULES and module not in CLI_MODULES):
            continue  # a unit's own modules (but a library module never imports a CLI)
        if _rank(target) >= rank and not (target_unit == unit and rank >= CLI_RANK):
            upward.append(f"line {line}: {target} (layer {_rank(target)} >= {rank})")
    assert not upward, f"{module} imports sideways or up: " + "; ".join(upward)


@pytest.mark.parametrize("module", ["softsae_lens.soft_topk", "softsae_lens.soft_topk_threshold"])
def test_the_operator_imports_torch_only(module):
    third_party = {
        target.split(".")[0]
        for _, target in _imports(module)
        if target.split(".")[0] not in {*sys.stdlib_module_names, "softsae_lens"}
        and target != "__future__"
    }
    assert third_party == {"torch"}


def test_the_architecture_knows_nothing_above_it():
    for module in (
        "softsae_lens.soft_config",
        "softsae_lens.soft_encoder",
        "softsae_lens.soft_reservoir",
        "softsae_lens.soft_k_budget",
        "softsae_lens.soft_sae",
    ):
        above = [
            t
            for _, t in _internal(module)
            if _unit(t)
            not in {"soft_topk", "soft_config", "soft_encoder", "soft_reservoir", "soft_k_budget"}
        ]
        assert not above, f"{module} imports {above}"


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a data module importing an experiment is reported."""
    fake = tmp_path / "softsae_lens" / "data" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from softsae_lens.experiments.demo import main\n")
    monkeypatch.setitem(MODULES, "softsae_lens.data.bad", fake)
    with pytest.raises(AssertionError, match="experiments.demo"):
        test_imports_point_down("softsae_lens.data.bad")
