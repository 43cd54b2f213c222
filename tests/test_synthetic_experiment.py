"""The synthetic ground-truth experiment (``python -m softsae_lens.experiments.synthetic``).

The acceptance numbers come from the default run (minutes); here the ``--quick`` run checks the
pipeline's invariants, and the pieces it is built from are checked directly.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE
from sae_lens.saes.topk_sae import TopKSAE
from scipy.stats import spearmanr

from softsae_lens import SoftSAE, SoftTrainingSAEConfig
from softsae_lens.experiments import synthetic as S
from softsae_lens.experiments.synthetic.jobs import pilot_inputs
from softsae_lens.experiments.synthetic.metrics import sample_inputs

PLOTS = S.PLOT_FILES


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic_quick")
    json_path = out / "custom" / "quick.json"
    S.main(["--quick", "--out", str(out), "--json", str(json_path), "--no-progress"])
    return out, json.loads(json_path.read_text())


def test_quick_run_writes_every_output(quick_run):
    out, result = quick_run
    for name in (*PLOTS, "results.md"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for regime in ("bimodal", "spread", "realistic"):
        assert f"Regime `{regime}`" in md
    assert "Acceptance" in md
    assert "Feature quality" in md and "Where features go wrong" in md
    assert set(result["files"]) >= {str(out / "custom" / "quick.json"), str(out / "results.md")}


def test_replot_redraws_from_the_json_alone(quick_run, tmp_path):
    out, _ = quick_run
    S.main(["--replot", str(out / "custom" / "quick.json"), "--out", str(tmp_path)])
    for name in (*PLOTS, "results.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "results.md").read_text() == (out / "results.md").read_text()


def test_quick_run_covers_every_regime_sae_and_seed(quick_run):
    _, result = quick_run
    assert [r["name"] for r in result["regimes"]] == ["bimodal", "spread", "realistic"]
    seeds, realistic = result["settings"]["seeds"], result["realistic_settings"]
    assert len(result["per_seed"]) == 2 * len(seeds) + len(realistic["seeds"])
    for run in result["per_seed"]:
        assert set(run["metrics"]) == set(S.MAIN_VARIANTS)
        n_eval = (realistic if run["regime"] == "realistic" else result["settings"])["n_eval"]
        for m in run["metrics"].values():
            for key in ("explained_variance", "mse", "mean_l0", "mcc", "f1", "uniqueness"):
                assert math.isfinite(m[key]), key
            assert m["buckets"] and sum(b["n"] for b in m["buckets"]) == n_eval
            for b in m["buckets"]:
                assert math.isfinite(b["rel_err"]) and b["rel_err"] >= 0


def test_quick_run_acceptance_follows_the_summary(quick_run):
    _, result = quick_run
    acc = result["acceptance"]
    verdicts = []
    for regime in ("bimodal", "spread", "realistic"):
        soft, topk = result["summary"][regime]["soft"], result["summary"][regime]["topk"]
        checks = acc[regime]
        ev_s, ev_t = soft["explained_variance"]["mean"], topk["explained_variance"]["mean"]
        mcc_s, mcc_t = soft["mcc"]["mean"], topk["mcc"]["mean"]
        rho = soft["spearman_k_hat"]["mean"]
        assert checks["mean_l0"]["soft"] == soft["mean_l0"]["mean"]
        rhos = checks["info_spearman_l0_vs_true_l0"]
        assert rhos["soft"] == soft["spearman_l0"]["mean"]
        assert {"jumprelu", "matching_pursuit", "batchtopk"} <= set(rhos)
        if regime == "realistic":
            f1_s, f1_t = soft["f1"]["mean"], topk["f1"]["mean"]
            assert checks["spearman_k_hat_ge_0.85"] == {"value": rho, "pass": rho >= 0.85}
            assert checks["mcc_soft_ge_topk"] == {
                "soft": mcc_s,
                "topk": mcc_t,
                "pass": mcc_s >= mcc_t,
            }
            assert checks["f1_soft_ge_topk"] == {"soft": f1_s, "topk": f1_t, "pass": f1_s >= f1_t}
            # EV against TopK's at SoftSAE's L0, from TopK (k) and TopK (k+1).
            info = checks["info_soft_vs_topk_plus1"]
            ev_at = info["ev_topk_interpolated_at_l0_soft"]
            assert checks["ev_soft_ge_topk_at_same_l0"] == {
                "soft": ev_s,
                "topk": ev_at,
                "pass": ev_s >= ev_at,
            }
        else:
            assert checks["ev_soft_ge_topk"] == {"soft": ev_s, "topk": ev_t, "pass": ev_s >= ev_t}
            assert checks["mcc_soft_ge_topk_minus_0.02"]["pass"] == (mcc_s >= mcc_t - 0.02)
            assert checks["spearman_k_hat_ge_0.9"] == {"value": rho, "pass": rho >= 0.9}
        verdicts += [c["pass"] for c in checks.values() if "pass" in c]
    assert len(verdicts) == 10
    assert acc["all_pass"] is all(verdicts)


def _summary(ev_soft, mcc_soft, rho, ev_topk=0.8, mcc_topk=0.9):
    def stat(v):
        return {"mean": v, "std": 0.0, "per_seed": [v]}

    soft = {"explained_variance": stat(ev_soft), "mcc": stat(mcc_soft), "mean_l0": stat(12.0)}
    soft["spearman_k_hat"] = stat(rho)
    topk = {"explained_variance": stat(ev_topk), "mcc": stat(mcc_topk), "mean_l0": stat(11.5)}
    plus1 = {"explained_variance": stat(ev_topk + 0.02), "mcc": stat(0.9), "mean_l0": stat(12.5)}
    return {"r": {"soft": soft, "topk": topk, "topk_plus1": plus1}}


def test_acceptance_fails_when_any_check_fails():
    assert S.acceptance(_summary(ev_soft=0.85, mcc_soft=0.89, rho=0.95))["all_pass"] is True
    for bad in (
        {"ev_soft": 0.79, "mcc_soft": 0.95, "rho": 0.95},
        {"ev_soft": 0.85, "mcc_soft": 0.87, "rho": 0.95},
        {"ev_soft": 0.85, "mcc_soft": 0.95, "rho": 0.89},
    ):
        assert S.acceptance(_summary(**bad))["all_pass"] is False, bad
    info = S.acceptance(_summary(0.85, 0.9, 0.95))["r"]["info_soft_vs_topk_plus1"]
    # TopK's EV interpolated at SoftSAE's L0 (12.0, halfway between 11.5 and 12.5).
    assert info["ev_topk_interpolated_at_l0_soft"] == pytest.approx(0.81)
    assert S.acceptance({"r": {"topk": {}}}) is None


def test_report_and_plots_do_not_import_torch():
    """They redraw a saved JSON alone (--replot), so they must not need torch or SAELens."""
    code = (
        "import sys, importlib.util, pathlib\n"
        "pkg = pathlib.Path(sys.argv[1])\n"
        "for name in ('report', 'plots'):\n"
        "    spec = importlib.util.spec_from_file_location(name, pkg / f'{name}.py')\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in ('torch', 'sae_lens') if m in sys.modules))\n"
    )
    pkg = Path(S.__file__).parent
    out = subprocess.run(
        [sys.executable, "-c", code, str(pkg)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_quick_run_true_l0_varies_strongly(quick_run):
    _, result = quick_run
    dists = {r["name"]: r["true_l0_distribution"] for r in result["regimes"]}
    bimodal = dists["bimodal"]
    assert bimodal["complex_mean"] > 4 * bimodal["simple_mean"]
    assert 0.4 < bimodal["complex_fraction"] < 0.6
    spread = dists["spread"]
    assert spread["std"] > 0.25 * spread["mean"]
    assert spread["quantiles"]["0.9"] - spread["quantiles"]["0.1"] >= 0.5 * spread["mean"]


def test_quick_run_soft_correlations_finite_and_l0_adaptive(quick_run):
    _, result = quick_run
    for run in result["per_seed"]:
        if run["regime"] == "realistic":
            continue
        soft, topk = run["metrics"]["soft"], run["metrics"]["topk"]
        for key in ("corr_k_hat_vs_true", "corr_l0_vs_true"):
            for stat in ("spearman", "pearson"):
                value = soft[key][stat]
                assert value is not None and math.isfinite(value), (key, stat)
        # SoftSAE's L0 varies across inputs; TopK's is its fixed k (ReLU may only lower it).
        assert soft["l0_max"] - soft["l0_min"] >= 3
        assert soft["l0_std"] > 0.5
        assert topk["l0_max"] <= topk["k"]
        assert topk["l0_std"] < soft["l0_std"]
        assert soft["k_max"] == pytest.approx(
            S.default_settings(quick=True).k_max_factor * soft["k"]
        )
    for regime in ("bimodal", "spread"):
        soft = result["summary"][regime]["soft"]
        assert math.isfinite(soft["spearman_k_hat"]["mean"])
        # Even 200 quick steps give k_hat a clearly positive rank correlation (about 0.85).
        assert soft["spearman_k_hat"]["mean"] > 0.3
        assert len(soft["buckets"]) >= 3


def test_quick_run_realistic_regime_uses_package_defaults_and_a_narrow_width(quick_run):
    _, result = quick_run
    regime = next(r for r in result["regimes"] if r["name"] == "realistic")
    dist = regime["true_l0_distribution"]
    assert regime["d_sae"] == regime["spec"]["num_features"] // 4
    # The width holds the most frequent features only: fewer of an input's features than all.
    assert 0 < dist["width_mean"] < dist["mean"]
    (run,) = [r for r in result["per_seed"] if r["regime"] == "realistic"]
    assert run["k"] == max(1, round(dist["width_mean"]))
    soft, topk = run["metrics"]["soft"], run["metrics"]["topk"]
    assert soft["k"] == topk["k"] == run["k"]
    # Package defaults: k_max = 2k, k-estimator width d_sae / 4, no experiment overrides.
    assert soft["k_max"] == 2 * soft["k"]
    assert soft["soft_config"]["k_estimator_width"] == regime["d_sae"] // 4
    assert soft["soft_config"]["alpha_end"] == SoftTrainingSAEConfig.alpha_end
    assert topk["l0_max"] <= topk["k"]
    hierarchy = soft["hierarchy"]
    assert {"within_width", "beyond_width", "outside_hierarchy", "depth_0", "depth_3"} <= set(
        hierarchy["groups"]
    )
    assert hierarchy["groups"]["depth_0"]["features"] == regime["spec"]["num_features"] // 128
    # Recall of a SoftSAE's parent latents, with and without an active child, lies in [0, 1].
    absorption = hierarchy.get("absorption")
    if absorption:
        assert 0 <= absorption["parent_recall_with_child"] <= 1
    assert math.isfinite(result["summary"]["realistic"]["soft"]["spearman_k_hat"]["mean"])


def test_modifier_shapes_true_l0():
    regime = S.Regime("b", "bimodal", num_features=128, d_in=32, dense_l0=20, simple_l0=2)
    _, generator = S.build_data(regime, seed=0)
    true_l0, mode = S.sample_true_l0(generator, 20_000, seed=0)
    assert true_l0[mode == 0].float().mean() == pytest.approx(2, abs=0.2)
    assert true_l0[mode == 1].float().mean() == pytest.approx(20, rel=0.05)
    assert mode.float().mean() == pytest.approx(0.5, abs=0.02)
    spread = S.Regime("s", "spread", num_features=128, d_in=32, dense_l0=20, min_l0=1)
    _, generator = S.build_data(spread, seed=0)
    true_l0, _ = S.sample_true_l0(generator, 20_000, seed=0)
    assert true_l0.float().mean() == pytest.approx(10.5, rel=0.05)
    # Uniform complexity: roughly uniform expected L0 over [1, 20] plus binomial noise.
    assert true_l0.float().std() > 5
    # Same seed, same inputs.
    again, _ = S.sample_true_l0(generator, 20_000, seed=0)
    assert torch.equal(true_l0, again)


def test_inference_forms_are_the_ones_saelens_saves():
    regime = S.default_regimes(quick=True)[0]
    settings = S.default_settings(quick=True)
    torch.manual_seed(0)
    x = torch.randn(64, regime.d_in)
    feature_dict, generator = S.build_data(regime, seed=0)
    pilot = pilot_inputs(feature_dict, generator, seed=0)
    expected = {
        "topk": TopKSAE,
        "batchtopk": JumpReLUSAE,
        "soft": SoftSAE,
        "matryoshka_batchtopk": JumpReLUSAE,
        "jumprelu": JumpReLUSAE,
        "matching_pursuit": MatchingPursuitSAE,
    }
    assert set(expected) == set(S.SAE_KINDS)
    for kind, cls in expected.items():
        sae = S.build_sae(kind, regime, true_mean_l0=6.4, settings=settings, pilot=pilot)
        inference = S.to_inference(sae)
        assert type(inference) is cls
        assert not inference.training
        if kind == "soft":
            assert torch.allclose(inference.predict_k(x), sae.predict_k(x), atol=1e-5)
            assert inference.cfg.k == 6 and inference.cfg.k_max == settings.k_max_factor * 6
        if kind == "batchtopk":
            # BatchTopK's inference threshold is the running top-k threshold it learned.
            assert torch.allclose(
                inference.threshold, sae.topk_threshold.float().expand_as(inference.threshold)
            )
        if kind == "jumprelu":
            # Started at the target: an untrained JumpReLU fires about k = 6 latents on the pilot.
            l0 = (inference.encode(pilot) != 0).sum(-1).float().mean()
            assert float(l0) == pytest.approx(6, rel=0.1)
        if kind == "matching_pursuit":
            # The per-input ceiling is SoftSAE's k_max; the threshold saved is the steered one.
            assert inference.cfg.max_iterations == settings.k_max_factor * 6
            assert inference.cfg.residual_threshold == sae.cfg.residual_threshold > 0


def test_thresholded_kinds_need_a_pilot_batch():
    regime = S.default_regimes(quick=True)[0]
    settings = S.default_settings(quick=True)
    for kind in ("jumprelu", "matching_pursuit"):
        with pytest.raises(ValueError, match="pilot"):
            S.build_sae(kind, regime, true_mean_l0=6.4, settings=settings)


def test_bucket_l0_is_the_encode_l0_of_the_evaluation_inputs():
    """The calibration table's L0 per true-L0 bucket and Spearman(L0, true L0) come from the
    inference SAE's own ``encode`` on the very inputs SAELens's eval scores; recomputed here
    from scratch for the architectures whose L0 varies per input."""
    regime = S.default_regimes(quick=True)[1]
    settings = S.default_settings(quick=True)
    feature_dict, generator = S.build_data(regime, seed=0)
    pilot = pilot_inputs(feature_dict, generator, seed=0)
    true_l0, _ = S.sample_true_l0(generator, 4096, seed=3)
    edges = S.bucket_edges(true_l0)
    for kind in ("jumprelu", "matching_pursuit", "soft"):
        torch.manual_seed(0)
        sae = S.build_sae(kind, regime, true_mean_l0=6.4, settings=settings, pilot=pilot)
        inference = S.to_inference(sae)
        metrics, _ = S.evaluate(inference, feature_dict, generator, 7, 2048, edges)
        torch.manual_seed(7)
        feats, x, _ = sample_inputs(feature_dict, generator, 2048, 2048)
        truth = (feats != 0).sum(-1)
        with torch.no_grad():
            l0 = (inference.encode(x) != 0).sum(-1)
        assert metrics["mean_l0"] == pytest.approx(float(l0.double().mean()), rel=1e-6)
        rho = metrics["corr_l0_vs_true"]["spearman"]
        assert -1 <= rho <= 1
        assert rho == pytest.approx(spearmanr(l0.numpy(), truth.numpy()).statistic, abs=1e-9)
        assert sum(b["n"] for b in metrics["buckets"]) == 2048
        for b in metrics["buckets"]:
            hi = b["hi"] if b["hi"] is not None else 10**9
            sel = (truth >= b["lo"]) & (truth < hi)
            assert b["n"] == int(sel.sum())
            assert b["l0"] == pytest.approx(float(l0[sel].double().mean()), rel=1e-9)
            spread = float(l0[sel].double().std()) if b["n"] > 1 else 0.0
            assert b["l0_spread"] == pytest.approx(spread, rel=1e-9, abs=1e-12)


def test_quick_run_scores_every_architecture_against_the_true_l0(quick_run):
    out, result = quick_run
    md = (out / "results.md").read_text()
    assert md.count("Which SAE's L0 follows complexity") == len(result["regimes"])
    adaptive = [n for n, v in S.MAIN_VARIANTS.items() if v["kind"] in S.ADAPTIVE_KINDS]
    assert {"jumprelu", "matryoshka_batchtopk", "matching_pursuit"} <= set(adaptive)
    for regime in ("bimodal", "spread", "realistic"):
        agg = result["summary"][regime]
        assert list(agg) == list(S.MAIN_VARIANTS)  # every architecture, in the table's order
        for name in adaptive:
            rho = agg[name]["spearman_l0"]
            assert all(-1 <= v <= 1 for v in rho["per_seed"]), (regime, name)
            assert f"| {result['labels'][name]} |" in md
    for run in result["per_seed"]:
        for name, m in run["metrics"].items():
            # L0 off target is the signed distance of the mean L0 from the SAE's own target.
            assert m["l0_off_target_pct"] == pytest.approx(
                100 * (m["mean_l0"] / m["target_l0"] - 1)
            )
            assert m["kind"] == S.MAIN_VARIANTS[name]["kind"]
        m = run["metrics"]
        assert m["jumprelu"]["target_l0"] == m["matching_pursuit"]["target_l0"] == run["k"]
        assert m["matryoshka_batchtopk"]["target_l0"] == pytest.approx(run["true_mean_l0"])
        # Steered toward the target during training, matching pursuit lands near it even in
        # the quick run (measured within 3%); so does JumpReLU's quadratic L0 loss (within 10%).
        assert abs(m["matching_pursuit"]["l0_off_target_pct"]) < 25, run["regime"]
        assert abs(m["jumprelu"]["l0_off_target_pct"]) < 40, run["regime"]
        # TopK cannot fire more than its k on any input; the matching pursuit no more than its cap.
        assert m["topk"]["l0_max"] <= m["topk"]["k"]
        assert m["matching_pursuit"]["l0_max"] <= m["matching_pursuit"]["max_iterations"]


def test_correlations_handle_constant_inputs():
    a = torch.tensor([1, 2, 3, 4])
    assert S.correlations(a, a * 2)["spearman"] == pytest.approx(1.0)
    assert S.correlations(torch.full((4,), 3), a) == {"spearman": None, "pearson": None}


def test_variants_flag_picks_ablation_rows_and_rejects_unknown_names(capsys):
    from softsae_lens.experiments.synthetic.arms import REALISTIC_ABLATION_VARIANTS
    from softsae_lens.experiments.synthetic.cli import _chosen, parse_args

    args = parse_args(["--realistic-ablation", "--variants", "soft", "topk"])
    # Table order, not command-line order, so reports line up across runs.
    assert list(_chosen(REALISTIC_ABLATION_VARIANTS, args.variants)) == ["topk", "soft"]
    assert _chosen(REALISTIC_ABLATION_VARIANTS, None) == REALISTIC_ABLATION_VARIANTS
    with pytest.raises(SystemExit):
        parse_args(["--realistic-ablation", "--variants", "sof"])
    assert "unknown ['sof']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--variants", "soft"])
    assert "needs --ablation or --realistic-ablation" in capsys.readouterr().err
