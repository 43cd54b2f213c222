"""The realistic-ground-truth grid (experiments/realistic_grid.py): one quick cell end to end."""

import json

import pytest

from softsae_lens.experiments import ablation_table
from softsae_lens.experiments import realistic_grid as G


@pytest.mark.slow
def test_one_quick_cell_runs_and_its_page_pairs_softsae_with_topk_by_seed(tmp_path, capsys):
    where = ["--out", str(tmp_path), "--sizes", "256x32", "--directions", "plain"]
    argv = [*where, "--lrs", "3e-3", "--seeds", "0", "1"]
    G.main(["run", "--quick", *argv])
    cell = G.Cell(256, 32, False, 3e-3)
    results = json.loads((tmp_path / cell.name / "results.json").read_text())
    G.main(["report", *argv])
    page = (tmp_path / "results.md").read_text()

    soft = results["summary"]["realistic"]["soft"]
    assert f"| SoftSAE | {soft['mcc']['mean']:.3f} ± {soft['mcc']['std']:.3f} |" in page
    diffs = [
        r["metrics"]["soft"]["explained_variance"] - r["metrics"]["topk"]["explained_variance"]
        for r in results["per_seed"]
    ]
    wins = sum(d >= 0 for d in diffs)
    assert f"{sum(diffs) / 2:.3f} ± " in page and f"({wins}/2)" in page
    assert "| 256 / 32 | 64 |" in page and "Not run yet" not in page

    # The ablation table reads the same cell: SoftSAE's row per seed, differenced with TopK's.
    ablation_table.main(
        ["--runs", f"{tmp_path / cell.name}=a note", "--out", str(tmp_path / "abl")]
    )
    table = (tmp_path / "abl" / "results.md").read_text()
    assert "## 256 true features / 32 dims, plain, lr 0.003, " in table and "(a note)" in table
    for r in results["per_seed"]:
        soft_run, topk_run = r["metrics"]["soft"], r["metrics"]["topk"]
        delta = soft_run["mcc"] - topk_run["mcc"]
        alpha = soft_run["soft_config"]["alpha_end"]
        assert (
            f"| soft | SoftSAE, package defaults | {r['seed']} | {alpha:g} | {soft_run['mcc']:.3f} "
            in table
        )
        assert f"| {delta:+.3f} |" in table

    # A second run finds the cell done and trains nothing; a missing cell is named on the page.
    capsys.readouterr()
    G.main(["run", "--quick", *argv])
    assert "1 done, 0 to run" in capsys.readouterr().out
    G.main(["report", *where, "--lrs", "3e-3", "1e-3", "--seeds", "0", "1"])
    assert "Not run yet: f256-d32-plain-lr0.001." in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "256"], "--sizes: '256' is not FEATURESxDIMS"),
        (["--sizes", "32x256"], "needs more true features than dimensions"),
        (["--lrs", "0"], "--lrs: 0.0 is not a positive number"),
        (["--samples", "10"], "--samples: 10 is below one batch"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        G.main(["run", "--plan-only", *argv])
    assert message in capsys.readouterr().err
