"""softsae_lens.analysis and the analyze CLI on a TransformerBridge: a tiny random Llama saved as a
Hugging Face folder (and as a GGUF file), booted as SAELens's SAETransformerBridge or SAEBridge.

Covers the model being left intact after a splice (hooks included), special tokens left alone and
uncounted as in SAELens's run_evals, and the CLI finding a local model.
"""

import json

import pytest
import torch
from helpers import (
    REPO,
    boot_plain_bridge,
    build_tiny_hf_model,
    parse_html,
    random_soft_sae,
    run_analyze,
    write_tiny_gguf,
)
from helpers import TEXTS as TINY_TEXTS

from softsae_lens import analysis as A
from softsae_lens.analyze import main as analyze_main

HOOK = "blocks.0.hook_resid_post"


def _zero_ablated_loss(model, tokens, hook_name):
    """The loss with ``hook_name`` zeroed through run_with_hooks (what run_evals does)."""
    out = model.run_with_hooks(
        tokens, fwd_hooks=[(hook_name, lambda t, hook: torch.zeros_like(t))], return_type="loss"
    )
    return float(out)


def _run_evals(model, sae):
    from datasets import Dataset
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    tokens = model.to_tokens(TINY_TEXTS * 8)[:, :8]
    store = ActivationsStore.from_sae(
        model,
        sae,
        dataset=Dataset.from_dict({"tokens": tokens.tolist()}),
        context_size=8,
        streaming=False,
        store_batch_size_prompts=4,
        n_batches_in_buffer=2,
        train_batch_size_tokens=16,
    )
    eval_cfg = EvalConfig(
        batch_size_prompts=4,
        n_eval_reconstruction_batches=2,
        n_eval_sparsity_variance_batches=2,
        compute_ce_loss=True,
        compute_kl=True,
    )
    metrics, _ = run_evals(sae, store, model, ActivationScaler(), eval_cfg)
    return metrics


@pytest.fixture(scope="module")
def tiny_hf_folder(tmp_path_factory):
    """A tiny random Llama and its BPE tokenizer saved as a Hugging Face folder."""
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny_hf") / "model")


def _boot(kind, folder):
    from softsae_lens.models.local import load_bridge

    return boot_plain_bridge(folder) if kind == "plain" else load_bridge(folder)


@pytest.mark.parametrize(
    "kind, splice",
    [
        ("plain", "token_k_report"),
        ("plain", "loss_with_k_override"),
        ("SAEBridge", "token_k_report"),
        ("SAEBridge", "saes"),
    ],
)
def test_bridge_hooks_work_after_a_splice(tiny_hf_folder, kind, splice):
    """After an SAE splice the bridge's hook at the SAE's site still takes hooks: a zero-ablation
    gives the same loss as before, and SAELens's run_evals runs (it divided by zero)."""
    bridge = _boot(kind, tiny_hf_folder)
    sae = random_soft_sae("blocks.0.hook_out")
    tokens = bridge.to_tokens(TINY_TEXTS[0])
    hook_point = bridge.hook_dict["blocks.0.hook_out"]
    clean = float(bridge(tokens, return_type="loss"))
    before = _zero_ablated_loss(bridge, tokens, "blocks.0.hook_out")
    assert before != pytest.approx(clean, abs=1e-3)
    if splice == "token_k_report":
        A.token_k_report(bridge, sae, TINY_TEXTS)
    elif splice == "loss_with_k_override":
        A.loss_with_k_override(bridge, sae, tokens, k=1)
    else:
        with bridge.saes(saes=[sae]):
            bridge(tokens)
    assert bridge.hook_dict["blocks.0.hook_out"] is hook_point
    assert hook_point.name == "blocks.0.hook_out"
    assert _zero_ablated_loss(bridge, tokens, "blocks.0.hook_out") == pytest.approx(before)
    assert float(bridge(tokens, return_type="loss")) == pytest.approx(clean)
    metrics = _run_evals(bridge, sae)
    perf = metrics["model_performance_preservation"]
    assert perf["ce_loss_without_sae"] != pytest.approx(perf["ce_loss_with_ablation"])


def test_plain_bridge_saes_still_breaks_its_hook_upstream(tiny_hf_folder):
    """The SAELens defect SAEBridge and spliced_sae work around. When this fails, SAELens has
    fixed SAETransformerBridge._reset_sae and the workaround can go."""
    bridge = boot_plain_bridge(tiny_hf_folder)
    tokens = bridge.to_tokens(TINY_TEXTS[0])
    before = _zero_ablated_loss(bridge, tokens, "blocks.0.hook_out")
    with bridge.saes(saes=[random_soft_sae("blocks.0.hook_out")]):
        pass
    assert bridge.hook_dict["blocks.0.hook_out"].name == "hook_out"
    assert _zero_ablated_loss(bridge, tokens, "blocks.0.hook_out") != pytest.approx(before)


# ------------------------------------------------------------------------ special tokens


@pytest.fixture(scope="module")
def sae_bridge(tiny_hf_folder):
    from softsae_lens.models.local import load_bridge

    return load_bridge(tiny_hf_folder)


def test_special_tokens_are_left_alone_and_uncounted_by_default(sae_bridge):
    sae = random_soft_sae("blocks.0.hook_out")
    bos = sae_bridge.tokenizer.bos_token_id
    records = A.token_k_report(sae_bridge, sae, TINY_TEXTS)
    assert [r.excluded for r in records] == [r.token_id == bos for r in records]
    assert sum(r.excluded for r in records) == len(TINY_TEXTS)
    # BOS keeps the model's own residual, so the loss at position 0 is the clean one.
    first = [r for r in records if r.position == 0]
    assert all(r.loss_spliced == pytest.approx(r.loss, abs=1e-5) for r in first)
    # The SAE's own numbers at BOS are still recorded.
    assert all(r.l0 > 0 and r.recon_error > 0 for r in first)
    stats = A.corpus_stats(records)
    kept = [r for r in records if not r.excluded]
    assert stats["n_excluded"] == len(TINY_TEXTS) and stats["n_tokens"] == len(records)
    assert stats["k_hat_mean"] == pytest.approx(sum(r.k_hat for r in kept) / len(kept))
    assert stats["k_hat_by_class"]["all"]["count"] == len(kept)
    assert "first" not in stats["k_hat_by_class"]
    assert A.k_loss_spearman(records, include_first=True)["n"] == sum(
        r.loss is not None for r in kept
    )

    included = A.token_k_report(sae_bridge, sae, TINY_TEXTS, exclude_special_tokens=False)
    assert not any(r.excluded for r in included)
    assert A.corpus_stats(included)["k_hat_by_class"]["first"]["count"] == len(TINY_TEXTS)
    spliced_first = [r for r in included if r.position == 0]
    assert any(r.loss_spliced != pytest.approx(r.loss, abs=1e-3) for r in spliced_first)
    for a, b in zip(records, included, strict=True):
        assert a.k_hat == pytest.approx(b.k_hat, abs=1e-5)  # BOS only changes later layers


def test_spliced_loss_matches_run_evals_reconstruction(sae_bridge):
    """Per-token spliced loss equals SAELens's own CE-with-SAE, special tokens handled alike."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.util import get_special_token_ids

    sae = random_soft_sae("blocks.0.hook_out")
    tokens = sae_bridge.to_tokens(TINY_TEXTS[0])
    ours = A.loss_with_k_override(sae_bridge, sae, tokens, cap=sae.cfg.k_max)
    theirs = get_recons_loss(
        sae,
        sae_bridge,
        ActivationScaler(),
        tokens,
        compute_kl=False,
        compute_ce_loss=True,
        ignore_tokens=get_special_token_ids(sae_bridge.tokenizer),
    )
    torch.testing.assert_close(ours.spliced_per_token, theirs["ce_loss_with_sae"].flatten())
    # Counted as run_evals counts: not the prediction made at BOS.
    assert ours.counted_per_token.tolist() == [False] + [True] * (tokens.shape[1] - 2)
    tokens_eos = torch.cat([tokens, torch.tensor([[sae_bridge.tokenizer.eos_token_id, 5]])], 1)
    with_eos = A.loss_with_k_override(sae_bridge, sae, tokens_eos, k=1)
    assert with_eos.n_excluded == 2  # BOS and EOS
    n_pos = tokens.shape[1]
    assert with_eos.counted_per_token.tolist() == [False] + [True] * (n_pos - 1) + [False]
    counted = with_eos.counted_per_token
    assert with_eos.spliced == pytest.approx(float(with_eos.spliced_per_token[counted].mean()))


def test_sae_bridge_saes_takes_exclude_special_tokens(sae_bridge):
    sae = random_soft_sae("blocks.0.hook_out")
    tokens = sae_bridge.to_tokens(TINY_TEXTS[0])
    records = A.token_k_report(sae_bridge, sae, tokens)
    with sae_bridge.saes(saes=[sae], exclude_special_tokens=True):
        native = sae_bridge(tokens, return_type="loss", loss_per_token=True)
    with sae_bridge.saes(saes=[sae]):
        everywhere = sae_bridge(tokens, return_type="loss", loss_per_token=True)
    expected = [r.loss_spliced for r in records if r.loss_spliced is not None]
    assert native.flatten().tolist() == pytest.approx(expected, abs=1e-5)
    assert float(everywhere[0, 0]) != pytest.approx(float(native[0, 0]), abs=1e-3)
    # with_k_override splices with the exclusion too; its forwards inside the block agree.
    with A.with_k_override(sae_bridge, sae, cap=sae.cfg.k_max):
        inside = sae_bridge(tokens, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(inside, native)
    assert sae_bridge.acts_to_saes == {}


def test_plain_bridge_with_k_override_warns_about_special_tokens(tiny_hf_folder, caplog):
    bridge = boot_plain_bridge(tiny_hf_folder)
    sae = random_soft_sae("blocks.0.hook_out")
    with A.with_k_override(bridge, sae, k=1):
        pass
    assert "exclude_special_tokens" in caplog.text
    caplog.clear()
    with A.with_k_override(bridge, sae, k=1, exclude_special_tokens=False):
        pass
    assert caplog.text == ""


def test_page_marks_special_tokens(sae_bridge, tmp_path):
    sae = random_soft_sae("blocks.0.hook_out")
    records = A.token_k_report(sae_bridge, sae, TINY_TEXTS)
    page = A.render_html(records)
    spans = parse_html(page)
    assert [a.get("data-excl") == "1" for a, _ in spans] == [r.excluded for r in records]
    assert "Grey: special tokens" in page and "(2 special)" in page
    assert (
        A.render_html(
            A.token_k_report(sae_bridge, sae, TINY_TEXTS, exclude_special_tokens=False)
        ).count("Grey: special tokens")
        == 0
    )


# ------------------------------------------------------------- CLI on a local model path


@pytest.fixture(scope="module")
def local_sae_dir(tiny_hf_folder, tmp_path_factory):
    """A SoftSAE saved with the metadata SAELens's runner writes for a local model: the folder
    as model_name, "HookedTransformer" as model_class_name, an alias hook name."""
    sae = random_soft_sae(HOOK)
    sae.cfg.metadata.model_name = str(tiny_hf_folder)
    sae.cfg.metadata.model_class_name = "HookedTransformer"
    out = tmp_path_factory.mktemp("local_sae")
    sae.save_model(out)
    return out


def _cli(args):
    return analyze_main([*args, "--no-png", "--text", TINY_TEXTS[0], "--text", TINY_TEXTS[1]])


def test_cli_with_model_path_to_a_folder(local_sae_dir, tiny_hf_folder, tmp_path, capsys):
    out = tmp_path / "a"
    stats = _cli(
        ["--sae", str(local_sae_dir), "--model-path", str(tiny_hf_folder), "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert stats["model"] == str(tiny_hf_folder)
    assert stats["hook_name_resolved"] == "blocks.0.hook_out"
    assert stats["n_tokens"] > 20 and stats["n_excluded"] == 2
    assert "2 special tokens (ids [0, 1, 2]) left out" in printed
    records = json.loads((out / "records.json").read_text())["records"]
    assert [r["excluded"] for r in records if r["position"] == 0] == [True, True]
    assert "Grey: special tokens" in (out / "tokens.html").read_text()

    included = _cli(
        ["--sae", str(local_sae_dir), "--model-path", str(tiny_hf_folder), "--out", str(out)]
        + ["--include-special-tokens"]
    )
    assert included["n_excluded"] == 0 and included["special_token_ids_excluded"] == []
    assert included["k_hat_by_class"]["all"]["count"] == stats["k_hat_by_class"]["all"]["count"] + 2


def test_cli_finds_a_local_model_from_the_sae_metadata(local_sae_dir, tiny_hf_folder, tmp_path):
    stats = _cli(["--sae", str(local_sae_dir), "--out", str(tmp_path / "b")])
    assert stats["model"] == str(tiny_hf_folder)
    assert stats["hook_name_resolved"] == "blocks.0.hook_out"


def test_cli_explains_a_model_it_cannot_find(tiny_hf_folder, tmp_path):
    sae = random_soft_sae(HOOK)
    sae.cfg.metadata.model_name = str(tmp_path / "moved-away")
    sae.save_model(tmp_path / "sae")
    with pytest.raises(RuntimeError, match="pass --model-path with a .gguf file or a Hugging Face"):
        _cli(["--sae", str(tmp_path / "sae"), "--out", str(tmp_path / "c")])


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--model-path", "MISSING", "--model-path MISSING does not exist: expected a .gguf file"),
        ("--model-path", "EMPTY", "--model-path EMPTY is not a model: expected a .gguf file"),
        ("--model-factory", "nocolon", "--model-factory nocolon: expected MODULE:FUNCTION"),
    ],
)
def test_cli_bad_model_arguments(local_sae_dir, tmp_path, capsys, flag, value, message):
    (tmp_path / "EMPTY").mkdir()
    paths = {"MISSING": str(tmp_path / "MISSING"), "EMPTY": str(tmp_path / "EMPTY")}
    with pytest.raises(SystemExit):
        _cli(["--sae", str(local_sae_dir), flag, paths.get(value, value)])
    err = capsys.readouterr().err
    assert message.replace("MISSING", paths["MISSING"]).replace("EMPTY", paths["EMPTY"]) in err


def test_cli_model_factory_errors_name_the_flag(local_sae_dir, tmp_path):
    with pytest.raises(ValueError, match="--model-factory no_such_module:f: cannot import"):
        _cli(["--sae", str(local_sae_dir), "--model-factory", "no_such_module:f"])
    with pytest.raises(ValueError, match="'helpers' has no function 'nothing'"):
        _cli(["--sae", str(local_sae_dir), "--model-factory", "helpers:nothing"])


def test_cli_subprocess_offline_on_a_gguf_file(local_sae_dir, tiny_hf_folder, tmp_path):
    """The real command line on a GGUF file, offline, with a fresh de-quantisation cache."""
    gguf = write_tiny_gguf(tiny_hf_folder, tmp_path / "tiny.gguf")
    out = tmp_path / "cli"
    proc = run_analyze(
        ["--sae", str(local_sae_dir), "--model-path", str(gguf), "--text", TINY_TEXTS[0]]
        + ["--out", str(out), "--no-png", "--k-cap", "2"],
        cwd=tmp_path,
        PYTHONPATH=str(REPO),
        SOFTSAE_CACHE=str(tmp_path / "cache"),
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "hook blocks.0.hook_out" in proc.stdout and "1 special token (ids [0, 1, 2])" in proc.stdout
    )
    stats = json.loads((out / "corpus_stats.json").read_text())
    assert stats["model"] == str(gguf) and stats["k_override"]["l0_override_mean"] <= 2
    assert len(list((tmp_path / "cache").glob("tiny-*/model.safetensors"))) == 1
