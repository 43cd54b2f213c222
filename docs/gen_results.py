"""Copy each experiment's own report into docs/results/<name>.md, so no result is typed by hand.

Run by ``make docs-results`` (standard library only). An experiment whose report does not exist
under ``--out-root`` is skipped and its page left as it is; images the report links to are copied
beside the page.
"""

from __future__ import annotations

import argparse
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Experiment:
    name: str  # the page is docs/results/<name>.md
    report: str  # relative to the out root
    command: str  # what writes the report
    title: str
    how: str  # the docs page (relative to docs/) that says how it was run


EXPERIMENTS = (
    Experiment(
        "demo",
        "demo/report.md",
        "make demo",
        "Results of the demo: SoftSAE and TopK at k = 32 on SmolLM2-135M",
        "demo.md",
    ),
    Experiment(
        "sweep",
        "sweep/results.md",
        "make sweep",
        "Results of the sweep: SoftSAE against every SAELens architecture across L0 (SmolLM2-135M)",
        "sweep.md",
    ),
    Experiment(
        "synthetic",
        "synthetic/results.md",
        "python -m softsae_lens.experiments.synthetic",
        "Results on ground truth: k_hat against the true number of active features",
        "synthetic.md",
    ),
    Experiment(
        "k-budget",
        "l0/results.md",
        "python -m softsae_lens.experiments.k_budget --sweeps out/sweep out/l0/sweep_2x "
        "out/l0/sweep_4x 'out/l0/sweep_4x_res=k_scale_reservoir, ba669bd' out/l0/k4_100000 "
        "out/l0/k4_200000 out/real2m out/gemma_sweep --synthetic out/l0/synth_1000 "
        "'out/l0/synth_1000_res=k_scale_reservoir' "
        "'out/l0/synth_1000_k4=k_scale_reservoir, rerun with the k_max arms' out/l0/synth_2000 "
        "'out/l0/synth_2000_res=k_scale_reservoir' --out out/l0 (each written by the command "
        "its page names)",
        "Results of the k budget: held-out L0 against the target",
        "k-budget.md",
    ),
    Experiment(
        "realistic-grid",
        "grid2/results.md",
        "python -m softsae_lens.experiments.realistic_grid report --out out/grid2 "
        "--sizes 2048x128 4096x256 --directions ortho plain --lrs 0.0003 0.001 0.003",
        "Realistic ground truth over a grid of settings: SoftSAE against TopK",
        "synthetic.md#a-grid-of-settings",
    ),
    Experiment(
        "ablation",
        "ablation/results.md",
        "python -m softsae_lens.experiments.ablation_table --runs DIR[=NOTE] ... --out out/ablation "
        "(each run written by the command its page names)",
        "SoftSAE ablations at the settings where it lost, against TopK",
        "synthetic.md#where-softsae-lost-and-why",
    ),
    Experiment(
        "gemma",
        "gemma_demo/report.md",
        "make gemma-demo",
        "Results of the demo on a second language model: SoftSAE and TopK at k = 32 on Gemma-3-270M",
        "models.md#a-second-language-model-gemma-3-270m",
    ),
    Experiment(
        "gemma-sweep",
        "gemma_sweep/results.md",
        "make gemma-sweep",
        "Results of the sweep on a second language model: SoftSAE and TopK at L0 16, 32, 64 on "
        "Gemma-3-270M",
        "models.md#a-second-language-model-gemma-3-270m",
    ),
    Experiment(
        "minilm",
        "minilm/results.md",
        "make minilm",
        "Results on all-MiniLM-L6-v2 sentence embeddings: SoftSAE vs TopK",
        "training.md#example-sentence-embeddings-all-minilm-l6-v2",
    ),
    Experiment(
        "sweep-2m",
        "real2m/results.md",
        "make saebench-2m SAEBENCH_2M_CACHE= SAEBENCH_2M_OUT=out/real2m (its two sweeps), then "
        "python -m softsae_lens.experiments.sweep --merge out/real2m/a/results.json "
        "out/real2m/b/results.json --out out/real2m",
        "Results of the sweep at 2M tokens (20x): SoftSAE against TopK, BatchTopK, Matryoshka "
        "BatchTopK and JumpReLU on SmolLM2-135M",
        "saebench.md#the-real-budget-run",
    ),
    Experiment(
        "saebench",
        "saebench/results.md",
        "make saebench-2m SAEBENCH_2M_CACHE= SAEBENCH_2M_OUT=out/real2m",
        "Results of SAEBench, offline: 15 SAEs trained on 2M tokens of SmolLM2-135M's layer 5",
        "saebench.md",
    ),
    Experiment(
        "saebench-absorption-32",
        "saebench_absorption_32/results.md",
        "python -m softsae_lens.experiments.sweep --architectures A --targets 32 --tokens 2000000 "
        "--out out/real2m/A for each architecture A (SoftSAE and TopK under out/real2m/a and b), "
        "then .venv-saebench/bin/python -m softsae_lens.experiments.saebench --evals absorption "
        "--probe-datasets 96_spam_is 113_movie_sent 5_hist_fig_ismale --saes "
        "out/real2m/A/saes/A-32 (one process per core, default --out out/saebench, that folder "
        "then copied to out/saebench_absorption_32 so the 15-SAE report keeps its own)",
        "Results of SAEBench's absorption eval: SoftSAE and four SAELens architectures at target "
        "L0 32, trained on 2M tokens of SmolLM2-135M's layer 5",
        "saebench.md#the-real-budget-run",
    ),
)

_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _relative_target(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith(("#", "/"))


def render(experiment: Experiment, report: Path, pages: Path) -> str:
    """The page for one report; copies the files it links to into ``pages/<name>/``."""
    lines, fenced = [], False
    for line in report.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            if line.startswith("#"):
                line = "#" + line  # the page's own title is the only level-1 heading

            def relink(match: re.Match[str]) -> str:
                target = match.group(2)
                path = target.split("#", 1)[0]
                source = report.parent / path
                if not _relative_target(target) or not path or not source.is_file():
                    return match.group(0)
                copied = pages / experiment.name / source.name
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, copied)
                return f"{match.group(1)}{experiment.name}/{source.name}{match.group(3)}"

            line = _LINK.sub(relink, line)
        lines.append(line)
    when = datetime.fromtimestamp(report.stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%d")
    header = [
        f"# {experiment.title}",
        "",
        f"> Generated by `make docs-results` (`python docs/gen_results.py`) from `out/{experiment.report}`,",
        f"> which `{experiment.command}` wrote on {when}. Do not edit: rerun the experiment, then",
        f"> `make docs-results`. How it was run: [{experiment.how.split('#')[0]}](../{experiment.how}).",
        "",
    ]
    return "\n".join(header + lines).rstrip() + "\n"


def generate(out_root: Path, pages: Path, only: set[str] | None = None) -> dict[str, str]:
    """Write every page whose report exists; returns ``{name: "wrote PATH" | "skipped: why"}``."""
    done = {}
    for experiment in EXPERIMENTS:
        if only and experiment.name not in only:
            continue
        report = out_root / experiment.report
        page = pages / f"{experiment.name}.md"
        if not report.is_file():
            done[experiment.name] = f"skipped: no {report} (run `{experiment.command}`)"
            continue
        pages.mkdir(parents=True, exist_ok=True)
        page.write_text(render(experiment, report, pages), encoding="utf-8")
        done[experiment.name] = f"wrote {page}"
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-root", type=Path, default=ROOT / "out", help="where experiments write"
    )
    parser.add_argument(
        "--pages", type=Path, default=ROOT / "docs" / "results", help="where pages go"
    )
    parser.add_argument(
        "--only", nargs="+", choices=[e.name for e in EXPERIMENTS], help="only these pages"
    )
    args = parser.parse_args(argv)
    for name, what in generate(args.out_root, args.pages, set(args.only or ())).items():
        print(f"{name}: {what}")


if __name__ == "__main__":
    main()
