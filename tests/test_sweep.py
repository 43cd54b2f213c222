"""The sweep (experiments/sweep): flags, L0 calibration, and a whole run on a tiny real LM."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import math

import numpy as np
import pytest
import torch
from helpers import TINY_D_MODEL, tiny_lm

from softsae_lens.data.corpus import load_corpus, tokenize_corpus
from softsae_lens.experiments.sweep.__main__ import main as sweep_main
from softsae_lens.experiments.sweep.calibrate import (
    L0SteeredMatchingPursuit,
    calibrate_jumprelu_threshold,
)
from softsae_lens.experiments.sweep.config import (
    ARCHITECTURES,
    K_BASED,
    QUICK,
    SweepConfig,
    parse_args,
    sae_config,
)
from softsae_lens.experiments.sweep.report import matched_l0_rows, merge_results, sweep_command
from softsae_lens.experiments.sweep.run import run_sweep

CTX = 32
HOOK = "blocks.1.hook_resid_post"
TARGETS = (4, 8)


# --- flags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--targets", "16,x"], "expected comma-separated integers such as 16,32,64, got '16,x'"),
        (["--targets", "0,8"], "expected positive integers, got '0,8'"),
        (["--architectures", "topk,gated"], "unknown architecture(s) ['gated']"),
        (["--d-sae", "100"], "--d-sae=100 must be at least 2 x the largest target L0 (64)"),
        (["--mp-max-iterations-factor", "0.5"], "--mp-max-iterations-factor must be >= 1"),
        (["--soft-k-max-factor", "0.5"], "--soft-k-max-factor must be >= 1"),
        (
            ["--d-sae", "200", "--soft-k-max-factor", "4"],
            "--d-sae=200 must be at least 4 x the largest target L0 (64): SoftSAE's k_max is 4k",
        ),
        (["--tokens", "100"], "--tokens=100 is less than one batch (--batch-tokens=512)"),
        (["--eval-batches", "0"], "--eval-batches must be positive, got 0"),
        (["--replot", "/nonexistent/results.json"], "no such file"),
        (
            ["--merge", "/nonexistent/a.json", "/no/b.json"],
            "--merge /nonexistent/a.json /no/b.json: no",
        ),
    ],
)
def test_bad_flags_say_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_and_quick_mode():
    cfg = parse_args([])
    assert cfg.targets == (16, 32, 64) and cfg.architectures == ARCHITECTURES
    assert len(cfg.runs()) == 18 and cfg.runs()[0] == ("soft-16", "soft", 16)
    quick = parse_args(["--quick", "--tokens", "4096"])
    assert quick.tokens == 4096 and quick.d_sae == QUICK["d_sae"]
    assert str(quick.out) == "out/sweep_quick"
    # A flag given beside --quick wins even where its value is the normal default.
    beside = parse_args(["--eval-variance-batches", "32", "--quick", "--out", "out/sweep"])
    assert (beside.eval_variance_batches, str(beside.out)) == (32, "out/sweep")
    assert beside.eval_batch_prompts == QUICK["eval_batch_prompts"]
    picked = parse_args(["--architectures", "soft,jumprelu", "--targets", "8,4"])
    assert [r[0] for r in picked.runs()] == ["soft-8", "soft-4", "jumprelu-8", "jumprelu-4"]


def test_every_architecture_gets_the_same_width_and_normalisation():
    cfg = SweepConfig()
    configs = [sae_config(arch, 16, 48, 96, cfg) for arch in ARCHITECTURES]
    assert {(c.d_in, c.d_sae, c.normalize_activations) for c in configs} == {
        (48, 96, "expected_average_only_in")
    }
    by_arch = dict(zip(ARCHITECTURES, configs, strict=True))
    assert all(by_arch[a].k == 16 for a in K_BASED)
    assert (
        by_arch["jumprelu"].target_l0 == 16
        and by_arch["jumprelu"].jumprelu_sparsity_loss_mode == "quadratic"
    )
    assert by_arch["matching_pursuit"].max_iterations == 32
    assert by_arch["matryoshka_batchtopk"].matryoshka_widths == [6, 24, 96]
    assert by_arch["soft"].k_max == 32
    wider = sae_config("soft", 16, 48, 96, SweepConfig(soft_k_max_factor=4.0))
    assert (wider.k, wider.k_max) == (16, 64)


# --- calibration --------------------------------------------------------------------------


def _acts(n=2048, d=TINY_D_MODEL, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * math.sqrt(d)


def test_jumprelu_threshold_starts_at_the_target_l0():
    from sae_lens import JumpReLUTrainingSAE

    cfg = sae_config("jumprelu", 8, TINY_D_MODEL, 256, SweepConfig())
    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(cfg)
    before = (sae.encode(_acts()) != 0).sum(-1).float().mean().item()
    threshold = calibrate_jumprelu_threshold(sae, _acts(), 8)
    after = (sae.encode(_acts(seed=1)) != 0).sum(-1).float().mean().item()
    assert before > 50  # SAELens's 0.01 starting threshold lets about half the latents fire
    assert after == pytest.approx(8, rel=0.15)
    assert sae.cfg.jumprelu_init_threshold == threshold > 0.01
    with pytest.raises(ValueError, match="target L0 must be in"):
        calibrate_jumprelu_threshold(sae, _acts(), 256)


def test_matching_pursuit_threshold_is_steered_to_the_target():
    from sae_lens.saes.sae import TrainStepInput

    cfg = sae_config("matching_pursuit", 6, TINY_D_MODEL, 128, SweepConfig())
    cfg.residual_threshold = 1e-3  # far too low: every token runs to max_iterations
    torch.manual_seed(0)
    sae = L0SteeredMatchingPursuit(cfg, target_l0=6)
    for step in range(80):
        x = _acts(256, seed=step)
        sae.training_forward_pass(TrainStepInput(x, {}, None, step, False))
    # Nearly every token runs to the cap (2 x target; a repeated atom stops a few earlier).
    assert 10 <= sae.l0_history[0] <= 12
    assert sum(sae.l0_history[-10:]) / 10 == pytest.approx(6, rel=0.2)
    assert sae.cfg.residual_threshold > 1e-2
    with pytest.raises(ValueError, match="must be positive"):
        L0SteeredMatchingPursuit(cfg, target_l0=0)


# --- a whole sweep on the tiny model --------------------------------------------------------


# what every sweep on the tiny model shares
TINY_RUN = dict(
    d_sae=64,
    batch_tokens=128,
    context_size=CTX,
    layer=1,
    lr=3e-3,
    eval_batches=1,
    eval_variance_batches=2,
    eval_batch_prompts=4,
    k_report_docs=2,
    pilot_rows=8,
)


def tiny_model_and_text():
    """The tiny model and the pydoc corpus tokenised for it: what every sweep here trains on."""
    model = tiny_lm()
    text = tokenize_corpus(
        load_corpus(("pydoc",)), model.tokenizer, CTX, use_cache=False, progress=False
    )
    return model, text


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    model, text = tiny_model_and_text()
    cfg = SweepConfig(
        targets=TARGETS, tokens=128 * 80, out=tmp_path_factory.mktemp("sweep"), **TINY_RUN
    )
    results = run_sweep(cfg, model=model, hook_name=HOOK, model_name="tiny", text=text)
    # The model and text ride along for tests that recompute a statistic from scratch.
    tiny_sweep_inputs.update(model=model, text=text)
    return cfg, results


tiny_sweep_inputs: dict = {}


def test_sweep_trains_and_scores_every_architecture_at_every_target(tiny_sweep):
    cfg, results = tiny_sweep
    runs = {(r["architecture"], r["target_l0"]): r for r in results["runs"]}
    assert set(runs) == {(a, t) for a in ARCHITECTURES for t in TARGETS}
    for (arch, target), run in runs.items():
        m = run["metrics"]
        for key, value in m.items():
            assert value is not None and math.isfinite(value), (arch, target, key)
        assert 0 <= m["dead_latents"] <= 64
        assert run["step_cpu_seconds"] > 0
        if arch == "topk":
            assert m["l0"] == pytest.approx(target, abs=0.5), (arch, target)
        if arch in ("batchtopk", "matryoshka_batchtopk"):
            # Saved as JumpReLU with the running threshold, an average that starts at 0: after
            # a short run it is still low, so L0 lands above k. Reported, not tuned.
            assert target <= m["l0"] <= 8 * target, (arch, target)
        if arch == "soft":
            assert m["l0"] == pytest.approx(target, rel=0.25), (arch, target)
            k = run["k_hat"]
            assert k["count"] > 0 and k["special_tokens_excluded"] >= 2
            assert 1 <= k["mean"] <= 2 * target
        if arch == "matching_pursuit":
            knob = run["knob"]
            assert 1 <= m["l0"] <= knob["max_iterations"]
            assert knob["final_residual_threshold"] != knob["initial_residual_threshold"]
        if arch == "jumprelu":
            assert run["knob"]["initial_threshold"] > 0
            assert m["l0"] == pytest.approx(target, rel=0.5), (arch, target)
    # Larger targets buy more latents, whatever the knob.
    for arch in ARCHITECTURES:
        assert runs[(arch, 8)]["metrics"]["l0"] > runs[(arch, 4)]["metrics"]["l0"], arch
    plan = results["plan"]
    assert plan["stream_tokens"] <= plan["train_split_tokens"]
    assert set(plan["step_cpu_seconds"]) == {r["name"] for r in results["runs"]}


def test_sweep_reports_every_architectures_per_token_l0(tiny_sweep):
    """Every SAE gets SoftSAE's per-token report for its L0: the L0 distribution and its
    Spearman with the token's surprisal and the next-token loss, on the k_hat report's tokens."""
    from sae_lens import SAE

    from softsae_lens.analysis import token_k_report
    from softsae_lens.analysis.stats import counted

    cfg, results = tiny_sweep
    for run in results["runs"]:
        t = run["l0_tokens"]
        assert t["count"] > 0 and t["special_tokens_excluded"] >= 2, run["name"]
        assert t["min"] <= t["p5"] <= t["median"] <= t["p95"] <= t["max"], run["name"]
        for key in ("spearman_with_token_surprisal", "spearman_with_next_token_loss"):
            rho = t[key]["rho"]
            assert rho is None or -1 <= rho <= 1, (run["name"], key)
            assert t[key]["n"] <= t["count"]
        if run["architecture"] == "topk":
            assert t["max"] <= run["target_l0"]  # TopK fires at most k on every token
        if run["architecture"] == "matching_pursuit":
            assert t["max"] <= run["knob"]["max_iterations"]
        if run["architecture"] == "soft":
            # The same tokens as the k_hat report, and the same L0 as a spliced-in SoftSAE
            # fires there (token_k_report's own count), recomputed from scratch.
            assert t["count"] == run["k_hat"]["count"]
            assert t["special_tokens_excluded"] == run["k_hat"]["special_tokens_excluded"]
            sae = SAE.load_from_disk(cfg.out / "saes" / run["name"])
            model, text = tiny_sweep_inputs["model"], tiny_sweep_inputs["text"]
            docs = [d for d in text.heldout_documents if d.strip()][: cfg.k_report_docs]
            kept = counted(token_k_report(model, sae, docs, max_tokens=cfg.context_size))
            assert t["mean"] == pytest.approx(sum(r.l0 for r in kept) / len(kept))
            loss = t["spearman_with_next_token_loss"]
            assert loss["n"] == sum(1 for r in kept if r.loss is not None and r.position > 0)


def test_sweep_writes_its_files_and_replots(tiny_sweep):
    from sae_lens import SAE

    cfg, results = tiny_sweep
    out = cfg.out
    for name in (
        "results.json",
        "results.md",
        "pareto.png",
        "pareto_explained_variance.png",
        "pareto_ce_loss_score.png",
        "pareto_kl_div_score.png",
    ):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == len(ARCHITECTURES) * len(TARGETS)
    table = [
        line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")
    ]
    # header + one row per SAE, the SoftSAE k_hat header + one row per target, every SAE's
    # per-token L0 header + one row per SAE, then the matched-L0 header + one row per target
    # and metric
    n_runs = len(saved["runs"])
    assert len(table) == 1 + n_runs + 1 + len(TARGETS) + 1 + n_runs + 1 + 3 * len(TARGETS)
    assert type(SAE.load_from_disk(out / "saes" / "soft-4")).__name__ == "SoftSAE"

    (out / "results.md").unlink()
    (out / "pareto.png").unlink()
    sweep_main(["--replot", str(out / "results.json")])
    # SoftSAE's rows: one per target in the main table and one in the per-token L0 table
    assert (out / "results.md").read_text().count("| SoftSAE |") == 2 * len(TARGETS)
    assert (out / "pareto.png").stat().st_size > 0


def test_sweep_trains_from_an_activation_cache_it_computes_once(tmp_path):
    model, text = tiny_model_and_text()
    common = dict(targets=(4,), tokens=128 * 40, activation_cache=tmp_path / "cache", **TINY_RUN)
    first = SweepConfig(
        architectures=("soft", "topk", "jumprelu", "matching_pursuit"),
        out=tmp_path / "a",
        **common,
    )
    results = run_sweep(first, model=model, hook_name=HOOK, model_name="tiny", text=text)
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")}
    # the training rows (one pass: exactly tokens) and the held-out rows
    assert len(cached) == 2
    assert 128 * 40 in {len(np.load(p, mmap_mode="r")) for p in cached}
    runs = {r["architecture"]: r for r in results["runs"]}
    assert runs["topk"]["metrics"]["l0"] == pytest.approx(4, abs=0.01)
    assert runs["soft"]["metrics"]["l0"] == pytest.approx(4, rel=0.3)
    assert runs["jumprelu"]["metrics"]["l0"] == pytest.approx(4, rel=0.6)
    mp = runs["matching_pursuit"]["knob"]
    assert mp["final_residual_threshold"] != mp["initial_residual_threshold"]
    for run in runs.values():
        assert 0 < run["metrics"]["explained_variance"] <= 1
        assert 0 < run["cache_heldout_metrics"]["explained_variance"] <= 1
        runner_cfg = json.loads((first.out / "saes" / run["name"] / "runner_cfg.json").read_text())
        assert runner_cfg["training_samples"] == 128 * 40
    # a second sweep over other architectures reads the same files
    second = SweepConfig(architectures=("batchtopk",), out=tmp_path / "b", **common)
    again = run_sweep(second, model=model, hook_name=HOOK, model_name="tiny", text=text)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.npy")} == cached
    assert again["runs"][0]["metrics"]["l0"] > 0

    # the two sweeps merged into one report
    parts = [str(first.out / "results.json"), str(second.out / "results.json")]
    sweep_main(["--merge", *parts, "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert [r["architecture"] for r in merged["runs"]] == [
        "soft",
        "topk",
        "batchtopk",
        "jumprelu",
        "matching_pursuit",
    ]
    report = (tmp_path / "merged" / "results.md").read_text()
    assert "2 sweeps side by side, each training from the shared activation cache" in report
    assert report.count("--activation-cache") == 2 and "| batchtopk | 4 |" in report
    assert len(matched_l0_rows(merged)) == 3  # SoftSAE (first sweep) against TopK's line
    assert sweep_command(merged).count("--activation-cache") == 2
    with pytest.raises(ValueError, match=r"SAEs \['batchtopk-4'\] are in more than one sweep"):
        merge_results([merged, again])
    other = json.loads(json.dumps(again))
    other["config"]["lr"] = 1e-3
    with pytest.raises(ValueError, match=r"sweep 2 ran with other settings than sweep 1: lr 0.001"):
        merge_results([results, other])


def test_sweep_runs_on_a_local_hugging_face_folder(tmp_path):
    from helpers import build_tiny_hf_model

    from softsae_lens.models import load_model_and_hook

    folder = build_tiny_hf_model(tmp_path / "model")
    model, hook, name = load_model_and_hook(layer=1, model_path=folder)
    assert hook == "blocks.1.hook_out" and name == str(folder)  # the bridge's real hook name
    text = tokenize_corpus(
        load_corpus(("pydoc",)), model.tokenizer, CTX, use_cache=False, progress=False
    )
    cfg = SweepConfig(
        targets=(4,),
        architectures=("soft", "topk"),
        tokens=128 * 20,
        d_sae=64,
        batch_tokens=128,
        context_size=CTX,
        layer=1,
        model_path=folder,
        eval_batches=1,
        eval_variance_batches=1,
        eval_batch_prompts=2,
        k_report_docs=2,
        pilot_rows=4,
        out=tmp_path / "sweep",
    )
    results = run_sweep(cfg, text=text)
    assert results["hook_name"] == "blocks.1.hook_out"
    for run in results["runs"]:
        assert all(v is not None and math.isfinite(v) for v in run["metrics"].values()), run
    assert results["runs"][0]["k_hat"]["count"] > 0
    with pytest.raises(SystemExit):
        parse_args(["--model-path", str(tmp_path)])  # no config.json there

    # The k budget's page names the model and a command that reruns this sweep, every
    # non-default flag included
    from softsae_lens.experiments.k_budget import markdown, sweep_command

    saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
    command = sweep_command(saved)
    assert f"--model-path {folder}" in command and "--d-sae 64" in command
    assert "--architectures soft,topk" in command and "--layer 1" in command
    assert "--tokens 2560" in command and "--quick" not in command and "--lr" not in command
    reparsed = parse_args(command.split()[3:] + ["--plan-only"])
    assert (reparsed.d_sae, reparsed.layer, reparsed.targets) == (64, 1, (4,))
    saved["command"] = command
    assert f"## {folder.name} (the sweep)" in markdown([saved], [])
    assert "SoftSAE (normalize)" in markdown([saved], [])
    saved["config"]["soft_k_max_factor"] = 4.0  # a wider ceiling is named in every row
    assert "SoftSAE (normalize, k_max 4k)" in markdown([saved], [])


def test_matched_l0_rows_interpolate_topk_in_log_l0():
    from softsae_lens.experiments.sweep.report import interpolate_at_l0, matched_l0_rows

    assert interpolate_at_l0([(16, 0.7), (64, 0.9)], 32) == pytest.approx(0.8)
    assert interpolate_at_l0([(16, 0.7), (64, 0.9)], 70) is None  # never extrapolated
    assert interpolate_at_l0([(16, 0.7), (64, 0.9)], 65) == 0.9  # within 3% of the last run
    metrics = {"explained_variance": 0.8, "ce_loss_score": 0.9, "kl_div_score": 0.85}
    runs = [
        {"architecture": "topk", "target_l0": 16, "metrics": {**metrics, "l0": 16.0}},
        {
            "architecture": "topk",
            "target_l0": 64,
            "metrics": {
                "l0": 64.0,
                "explained_variance": 0.9,
                "ce_loss_score": 1.0,
                "kl_div_score": 0.95,
            },
        },
        {"architecture": "soft", "target_l0": 32, "metrics": {**metrics, "l0": 32.0}},
    ]
    rows = {r["metric"]: r for r in matched_l0_rows({"runs": runs})}
    assert rows["explained_variance"]["topk"] == pytest.approx(0.85)
    assert rows["explained_variance"]["difference"] == pytest.approx(-0.05)


def test_an_sae_does_not_depend_on_the_other_saes_in_its_sweep(tmp_path):
    """The stream's shuffle draws from the global generator, which building each SAE also
    draws from: SoftSAE trained alone must equal SoftSAE trained beside TopK (built last)."""
    from safetensors.torch import load_file

    model, text = tiny_model_and_text()
    weights = {}
    for archs in (("soft",), ("soft", "topk")):
        cfg = SweepConfig(
            architectures=archs,
            targets=(4,),
            tokens=128 * 20,
            out=tmp_path / "-".join(archs),
            **TINY_RUN,
        )
        run_sweep(cfg, model=model, hook_name=HOOK, model_name="tiny", text=text)
        weights[archs] = load_file(cfg.out / "saes" / "soft-4" / "sae_weights.safetensors")
    alone, beside = weights.values()
    assert alone.keys() == beside.keys()
    for name in alone:
        assert torch.equal(alone[name], beside[name]), name
