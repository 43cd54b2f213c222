"""SAEBench's offline evals (softsae_lens.experiments.saebench) in their own environment.

The quick mode runs the whole path in ``.venv-saebench`` (``make saebench-env``): a tiny random
model, its activations cached on disk, tiny SoftSAE/TopK/BatchTopK SAEs trained by the package's
pipeline, every offline SAEBench eval, the report. Without that environment the test skips and
names ``make saebench-env``; under ``make test`` (``SOFTSAE_REQUIRE_SAEBENCH=1``) it fails instead.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SAEBENCH_VENV = REPO / ".venv-saebench"
SAEBENCH_PY = SAEBENCH_VENV / "bin" / "python"


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def _saebench_python() -> Path:
    if SAEBENCH_PY.exists() and (SAEBENCH_VENV / ".installed").exists():
        return SAEBENCH_PY
    message = f"SAEBench's environment is absent ({SAEBENCH_VENV}): run `make saebench-env`"
    if os.environ.get("SOFTSAE_REQUIRE_SAEBENCH") == "1":
        pytest.fail(message + " [SOFTSAE_REQUIRE_SAEBENCH=1: make test builds it]", pytrace=False)
    pytest.skip(message)


def test_help_and_plan_work_in_the_main_environment(tmp_path):
    cmd = [sys.executable, "-m", "softsae_lens.experiments.saebench"]
    out = subprocess.run(
        [*cmd, "--help"], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "--plan-only" in out.stdout and "--quick" in out.stdout
    plan = subprocess.run(
        [*cmd, "--plan-only", "true"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stderr
    assert "predicted cost for 15 SAEs" in plan.stdout and "total" in plan.stdout


def _quick_run(python: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "softsae_lens.experiments.saebench", "--quick", "true"]
        + ["--out", str(out), *flags],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=out.parent,
        timeout=1500,
    )


@pytest.mark.slow
def test_quick_mode_runs_every_offline_eval_and_reports(tmp_path):
    python = _saebench_python()
    out = tmp_path / "saebench"
    run = _quick_run(python, out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    assert (out / "results.md").read_text().startswith("# SAEBench")
    assert (out / "plot.png").stat().st_size > 0
    assert set(results["saes"]) == {"soft-8", "topk-8", "batchtopk-8"}
    # the first-letter probe is filed under the run's own folder, by the SAEs' model name
    assert list((out / "work" / "absorption" / "probes").glob("*/layer_*/probe.pth"))
    for name, entry in results["saes"].items():
        evals = entry["evals"]
        errors = {e: r["error"] for e, r in evals.items() if r["error"]}
        assert not errors, (name, errors)
        # mdl is left out by default: sae-bench 0.6.0's mdl raises NameError as a library
        assert set(evals) == {"core", "sparse_probing_sae_probes", "absorption", "meta_structure"}
        core = evals["core"]["metrics"]
        ev = core["reconstruction_quality/explained_variance"]
        assert math.isfinite(ev) and 0.0 < ev <= 1.0, (name, ev)
        assert 0 < core["sparsity/l0"] < 64, (name, core["sparsity/l0"])
        assert math.isfinite(core["model_performance_preservation/ce_loss_score"])
        probes = evals["sparse_probing_sae_probes"]["metrics"]
        # HTML versus other text: the last tokens' words tell them apart even in a random model
        assert probes["160_code_HTML/top_16_test_accuracy"] > 0.6, (name, probes)
        for k in (1, 2, 5, 16):
            assert 0.0 <= probes[f"mean/top_{k}_test_accuracy"] <= 1.0
        absorption = evals["absorption"]["metrics"]
        assert "skipped" not in absorption, (name, absorption)
        for key in ("mean_absorption_fraction_score", "mean_full_absorption_score"):
            assert 0.0 <= absorption[key] <= 1.0, (name, key, absorption[key])
        meta = evals["meta_structure"]["metrics"]["decoder_fraction_variance_explained"]
        assert math.isfinite(meta)
        if entry["architecture"] == "soft":
            k_hat = entry["k_hat"]["k_hat"]
            assert 1.0 <= k_hat["mean"] <= 64.0 and k_hat["std"] >= 0.0
        else:
            assert entry["k_hat"] is None

    # A second run into the same folder keeps every SAE's finished evals (same weights: the
    # training is seeded) instead of running them again.
    again = _quick_run(python, out, "--evals", "core")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert again.stdout.count("every eval done by an earlier run, kept") == 3, again.stdout
    kept = json.loads((out / "results.json").read_text())["saes"]
    assert {n: e["evals"] for n, e in kept.items()} == {
        n: e["evals"] for n, e in results["saes"].items()
    }

    # An SAE missing one eval (a run stopped before it) gets only that eval.
    per_sae = out / "per_sae" / "topk-8.json"
    entry = json.loads(per_sae.read_text())
    del entry["evals"]["meta_structure"]
    per_sae.write_text(json.dumps(entry))
    third = _quick_run(python, out, "--evals", "core", "meta_structure")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-5000:]
    assert third.stdout.count("every eval done by an earlier run, kept") == 2, third.stdout
    assert "[saebench] topk-8: meta_structure" in third.stdout
    assert "[saebench] topk-8: core" not in third.stdout
    assert "meta_structure" in json.loads(per_sae.read_text())["evals"]


def test_frontier_rows_compare_softsae_with_each_architecture_interpolated_to_its_l0():
    from softsae_lens.experiments.saebench.report import _markdown, frontier_rows

    def entry(arch, target, l0, ev, absorption):
        core = {"sparsity/l0": l0, "reconstruction_quality/explained_variance": ev}
        return {
            "architecture": arch,
            "target_l0": target,
            "evals": {
                "core": {"metrics": core, "seconds": 1.0, "error": None},
                "absorption": {
                    "metrics": {"mean_absorption_fraction_score": absorption},
                    "seconds": 1.0,
                    "error": None,
                },
            },
        }

    results = {
        "config": {},
        "timings": {},
        "saes": {
            "topk-16": entry("topk", 16, 16.0, 0.70, 0.20),
            "topk-64": entry("topk", 64, 64.0, 0.90, 0.40),
            "soft-32": entry("soft", 32, 32.0, 0.85, 0.25),
            "soft-128": entry("soft", 128, 128.0, 0.95, 0.10),
        },
    }
    rows = {(r["sae"], r["metric"]): r for r in frontier_rows(results)}
    # at L0 32, halfway between 16 and 64 in log L0: TopK's EV 0.80, absorption 0.30
    assert rows[("soft-32", "EV")]["difference"] == pytest.approx(0.05)
    assert rows[("soft-32", "EV")]["better"] is True
    assert rows[("soft-32", "absorption")]["difference"] == pytest.approx(-0.05)
    assert rows[("soft-32", "absorption")]["better"] is True  # lower absorption is better
    # no extrapolation past TopK's largest L0
    assert rows[("soft-128", "EV")]["difference"] is None
    assert rows[("soft-128", "EV")]["better"] is None
    text = _markdown(results)
    assert "in 2 of 2 comparisons" in text and "| soft-32 | 32.0 | topk | +0.0500 |" in text


def test_absorption_model_stops_after_the_hooks_block_and_caches_the_same_activations():
    from helpers import tiny_lm

    from softsae_lens.experiments.saebench.evals import ForwardToHookLayer

    model = tiny_lm(n_layers=3)
    hook = "blocks.0.hook_resid_post"
    tokens = torch.randint(
        3, model.cfg.d_vocab, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    _, full = model.run_with_cache(tokens, names_filter=[hook, "blocks.2.hook_resid_post"])
    short = ForwardToHookLayer(model, layer=0)
    out, cache = short.run_with_cache(tokens, names_filter=[hook, "blocks.2.hook_resid_post"])
    torch.testing.assert_close(cache[hook], full[hook])
    assert "blocks.2.hook_resid_post" not in cache  # the later blocks did not run
    assert out.shape == (2, 12, model.cfg.d_model)  # the residual stream, not logits
    assert short.cfg is model.cfg and short.tokenizer is model.tokenizer
    # SAEBench files its probe under probes_dir / cfg.model_name: a local model's absolute path
    # there would put the probe beside the weights, so the wrapper can carry a plain name
    named = ForwardToHookLayer(model, layer=0, model_name="tiny")
    assert named.cfg.model_name == "tiny" and model.cfg.model_name != "tiny"
    assert named.cfg.d_model == model.cfg.d_model and named.tokenizer is model.tokenizer


def test_decoder_rows_are_folded_to_unit_norm_where_that_keeps_the_sae_the_same(capsys):
    # SAEBench's absorption scores a latent by activation * cos(probe, decoder row), so rows of
    # norm 3 understate a JumpReLU latent's share threefold; SAEBench folds only SAEs it loads by id
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig

    from softsae_lens.experiments.saebench.evals import unit_norm_decoder

    torch.manual_seed(0)
    jumprelu = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=48))
    with torch.no_grad():
        jumprelu.W_enc.normal_()
        jumprelu.threshold.fill_(0.5)
        jumprelu.W_dec.mul_(
            torch.linspace(0.3, 8.0, 48)[:, None] / jumprelu.W_dec.norm(dim=-1, keepdim=True)
        )
    x = torch.randn(64, 16)
    before = jumprelu.encode(x)
    recon_before = jumprelu.decode(before)
    assert (before > 0).float().mean() > 0.05  # the check below compares firing latents, not zeros

    folded = unit_norm_decoder("jumprelu", jumprelu)
    after = folded.encode(x)
    torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(48))
    assert torch.equal(before > 0, after > 0)
    torch.testing.assert_close(folded.decode(after), recon_before, rtol=1e-4, atol=1e-4)
    assert "folded decoder norms (median" in capsys.readouterr().out

    # TopK's selection would change under the fold, so SAELens refuses it and the SAE stays as is
    topk = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=4))
    with torch.no_grad():
        topk.W_dec.mul_(3.0)
    weights = topk.W_dec.detach().clone()
    assert unit_norm_decoder("topk", topk) is topk
    assert torch.equal(topk.W_dec, weights)
    assert "cannot be folded" in capsys.readouterr().out

    # unit rows: untouched, and silent
    unit = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=4))
    with torch.no_grad():
        unit.W_dec.div_(unit.W_dec.norm(dim=-1, keepdim=True))
    assert unit_norm_decoder("unit", unit) is unit
    assert capsys.readouterr().out == ""


def test_results_from_before_the_fold_are_redone_only_where_the_fold_changes_them(tmp_path):
    # a JumpReLU SAE evaluated before the runner folded decoder norms read absorption 0.017
    # instead of 0.130: a resumed run must not keep that; unit-row SAEs' results stay valid
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig

    from softsae_lens.experiments.saebench.config import SaebenchConfig
    from softsae_lens.experiments.saebench.run import PER_SAE, _earlier_result, _weights_digest

    cfg = SaebenchConfig(out=tmp_path / "out")
    (cfg.out / PER_SAE).mkdir(parents=True)
    jumprelu = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=16))
    with torch.no_grad():
        jumprelu.W_dec.mul_(3.0 / jumprelu.W_dec.norm(dim=-1, keepdim=True))
    unit = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=2))
    with torch.no_grad():
        unit.W_dec.div_(unit.W_dec.norm(dim=-1, keepdim=True))
    for name, sae in (("jumprelu-2", jumprelu), ("topk-2", unit)):
        sae.save_model(tmp_path / name)

    def saved(name, **extra):
        entry = {"weights_sha256": _weights_digest(tmp_path / name), "evals": {}, **extra}
        (cfg.out / PER_SAE / f"{name}.json").write_text(json.dumps(entry))
        return _earlier_result(cfg, name, tmp_path / name)

    assert saved("jumprelu-2") is None  # unfolded rows, no marker: redone
    assert saved("jumprelu-2", decoder_norms_folded=True) is not None
    assert saved("topk-2") is not None  # unit rows: the fold changes nothing, kept
