"""The demo: its flags, and end to end on real SmolLM2 activations and real text, a few batches."""

import json

import pytest
import torch

from softsae_lens.experiments.demo import parse_args


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eval-batch-prompts", "0"], "--eval-batch-prompts must be positive, got 0"),
        (["--eval-variance-batches", "0"], "--eval-variance-batches must be positive, got 0"),
        (["--k-report-docs", "-1"], "--k-report-docs must be >= 0, got -1"),
        (["--tokens", "100"], "--tokens=100 is less than one batch (--batch-tokens=1024)"),
    ],
)
def test_bad_flags_name_the_flag_value_and_rule(argv, message):
    with pytest.raises(SystemExit) as err:
        parse_args(argv)
    assert str(err.value) == message


def test_eval_budget_follows_the_flags():
    cfg = parse_args(["--eval-batches", "3", "--eval-batch-prompts", "4", "--context-size", "64"])
    budget = cfg.eval_budget()
    # L0 and explained variance read many more rows than the CE score: they are cheap, and an
    # adaptive SAE's mean L0 on a few documents is off by several percent.
    assert (budget.ce_batches, budget.variance_batches) == (3, 32)
    assert budget.ce_tokens == 3 * 4 * 64 and budget.k_report_tokens == 64
    assert parse_args(["--eval-variance-batches", "9"]).eval_budget().variance_batches == 9


@pytest.mark.slow
@pytest.mark.smollm2
def test_demo_end_to_end_on_real_model_and_text(tmp_path):
    from sae_lens import SAE

    import softsae_lens  # noqa: F401
    from softsae_lens.experiments.demo import run_demo

    out = tmp_path / "demo"
    cfg = parse_args(
        [
            "--tokens",
            "24576",
            "--batch-tokens",
            "512",
            "--d-sae",
            "1152",
            "--k",
            "16",
            "--lr",
            "3e-3",
            "--eval-batches",
            "2",
            "--eval-batch-prompts",
            "4",
            "--k-report-docs",
            "3",
            "--out",
            str(out),
        ]
    )
    summary = run_demo(cfg)

    for name in ("metrics.json", "report.md", "k_hat_hist.png", "sample_tokens.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 48
    assert saved["eval_budget"]["ce_tokens"] == 2 * 4 * 128
    # The stream fit in the training split, and the plan priced the evaluation before it ran.
    assert saved["plan"]["stream_tokens"] < 100_000 and saved["plan"]["eval_cost"]["seconds"] > 0
    report = (out / "report.md").read_text()
    assert "| explained_variance |" in report and "softsae" in report and "topk" in report
    for source in ("pydoc", "stdlib-doc", "stdlib-src"):
        assert f"{source}: " in report, source

    for name, row in summary["metrics"].items():
        for key in ("explained_variance", "mse", "ce_loss_score", "l0"):
            assert row[key] is not None and torch.isfinite(torch.tensor(row[key])), (name, key)
        assert row["explained_variance"] > 0, name
        assert 0 < row["l0"] <= 2 * 16, name
    k_stats = summary["softsae_k_hat"]
    assert 1 <= k_stats["mean"] <= 32 and k_stats["count"] > 50
    assert k_stats["special_tokens_excluded"] >= 3  # each document's BOS
    assert k_stats["spearman_with_next_token_loss"]["rho"] is not None

    # the saved SAEs reload (after "soft" is registered) and reproduce the evaluated model
    soft = SAE.load_from_disk(out / "saes" / "softsae")
    again = SAE.load_from_disk(out / "saes" / "softsae")
    assert type(soft).__name__ == "SoftSAE" and soft.cfg.metadata.hook_name == "blocks.5.hook_out"
    x = torch.randn(20, 576) * 50
    torch.testing.assert_close(soft(x), again(x))
    torch.testing.assert_close(soft.predict_k(x), again.predict_k(x))
    topk = SAE.load_from_disk(out / "saes" / "topk")
    assert type(topk).__name__ == "TopKSAE"


def test_demo_on_a_local_hugging_face_folder(tmp_path, monkeypatch):
    """The demo's whole path, offline, on a tiny model folder a user could have saved."""
    from helpers import build_tiny_hf_model

    monkeypatch.setenv("SOFTSAE_CACHE", str(tmp_path / "cache"))  # the token rows go there
    from softsae_lens.experiments.demo import run_demo

    folder = build_tiny_hf_model(tmp_path / "model")
    out = tmp_path / "demo"
    cfg = parse_args(
        [
            "--model-path",
            str(folder),
            "--sources",
            "pydoc",
            "--layer",
            "1",
            "--tokens",
            "4096",
            "--batch-tokens",
            "256",
            "--context-size",
            "32",
            "--d-sae",
            "64",
            "--k",
            "4",
            "--eval-batches",
            "1",
            "--eval-batch-prompts",
            "2",
            "--k-report-docs",
            "2",
            "--out",
            str(out),
        ]
    )
    summary = run_demo(cfg)
    assert summary["model"] == str(folder) and summary["hook_name"] == "blocks.1.hook_out"
    assert summary["corpus"] == "pydoc"
    for row in summary["metrics"].values():
        assert all(v is not None and torch.isfinite(torch.tensor(v)) for v in row.values()), row
    assert summary["softsae_k_hat"]["special_tokens_excluded"] >= 2
    assert (out / "report.md").read_text().count("pydoc: ") == 1
    assert list((tmp_path / "cache" / "tokens").iterdir())  # pre-tokenised and cached
    with pytest.raises(SystemExit, match="expected a .gguf file or a Hugging Face model folder"):
        parse_args(["--model-path", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse_args(["--sources", "pydoc,wikipedia"])
