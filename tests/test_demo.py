"""End to end: the demo's own path on real SmolLM2 activations and real text, a few batches."""

import json

import pytest
import torch

pytestmark = pytest.mark.smollm2


@pytest.mark.slow
def test_demo_end_to_end_on_real_model_and_text(tmp_path):
    from sae_lens import SAE

    import softsae_lens  # noqa: F401
    from softsae_lens.demo import parse_args, run_demo

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
            "--out",
            str(out),
        ]
    )
    cfg.k_report_docs = 3
    summary = run_demo(cfg)

    for name in ("metrics.json", "report.md", "k_hat_hist.png", "sample_tokens.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text())["steps"] == 48
    report = (out / "report.md").read_text()
    assert "| explained_variance |" in report and "softsae" in report and "topk" in report

    for name, row in summary["metrics"].items():
        for key in ("explained_variance", "mse", "ce_loss_score", "l0"):
            assert row[key] is not None and torch.isfinite(torch.tensor(row[key])), (name, key)
        assert row["explained_variance"] > 0, name
        assert 0 < row["l0"] <= 2 * 16, name
    k_stats = summary["softsae_k_hat"]
    assert 1 <= k_stats["mean"] <= 32 and k_stats["tokens"] > 50
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
