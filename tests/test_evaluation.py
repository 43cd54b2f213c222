"""Held-out evaluation shared by the demo and the sweep (evaluation.py), on a tiny real LM."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import math

import pytest
import torch
from helpers import TINY_D_MODEL, tiny_lm

from softsae_lens import SoftSAE, SoftSAEConfig
from softsae_lens.data.corpus import load_corpus, tokenize_corpus
from softsae_lens.evals.lm import (
    HEADLINE_KEYS,
    EvalBudget,
    eval_cost,
    evaluate_sae,
    headline_metrics,
    heldout_store,
    measure_forward_seconds,
)
from softsae_lens.evals.token_stats import soft_k_statistics

HOOK = "blocks.1.hook_resid_post"
CTX = 32


@pytest.fixture(scope="module")
def model():
    return tiny_lm()


@pytest.fixture(scope="module")
def text(model):
    c = load_corpus(("pydoc",))
    return tokenize_corpus(c, model.tokenizer, CTX, use_cache=False, progress=False)


def _soft(seed=0):
    torch.manual_seed(seed)
    sae = SoftSAE(SoftSAEConfig(d_in=TINY_D_MODEL, d_sae=64, k=4))
    sae.cfg.metadata.hook_name = HOOK
    return sae


def _topk():
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=TINY_D_MODEL, d_sae=64, k=4))
    sae.cfg.metadata.hook_name = HOOK
    return sae


def test_budget_arithmetic_and_bad_values():
    b = EvalBudget(ce_batches=3, variance_batches=5, batch_prompts=4, context_size=16)
    assert b.ce_tokens == 3 * 4 * 16 and b.variance_tokens == 5 * 4 * 16
    assert b.heldout_rows_needed == (3 + 5) * 4
    with pytest.raises(ValueError, match="batch_prompts must be positive, got 0"):
        EvalBudget(batch_prompts=0)
    with pytest.raises(ValueError, match="k_report_docs must be >= 0, got -1"):
        EvalBudget(k_report_docs=-1)


def test_cost_counts_three_full_forwards_per_ce_token():
    b = EvalBudget(
        ce_batches=2,
        variance_batches=4,
        batch_prompts=2,
        context_size=10,
        k_report_docs=3,
        k_report_tokens=10,
    )
    forward = {"full": 2.0, "partial": 0.5, "tokens": 20.0}
    cost = eval_cost(b, n_saes=3, n_soft=1, forward=forward)
    assert cost["full_forward_tokens"] == 3 * 3 * 40 + 2 * 3 * 10
    assert cost["partial_forward_tokens"] == 3 * 80
    assert math.isclose(cost["run_evals_seconds"], 360 * 0.1 + 240 * 0.025)
    assert math.isclose(cost["k_report_seconds"], 60 * 0.1)
    assert eval_cost(b, 3, 1, None)["seconds"] is None


def test_measured_forward_is_positive(model):
    tokens = torch.randint(0, int(model.cfg.d_vocab), (2, CTX))
    seconds = measure_forward_seconds(model, tokens, HOOK)
    assert seconds["full"] > 0 and seconds["partial"] > 0 and seconds["tokens"] == 2 * CTX


def test_every_sae_is_scored_on_the_same_heldout_tokens(model, text):
    budget = EvalBudget(ce_batches=2, variance_batches=3, batch_prompts=4, context_size=CTX)
    first = headline_metrics(evaluate_sae(_topk(), model, text.heldout, budget))
    soft = headline_metrics(evaluate_sae(_soft(), model, text.heldout, budget))
    again = headline_metrics(evaluate_sae(_topk(), model, text.heldout, budget))
    # A store shared between SAEs would give the repeat later rows (reset_input_dataset
    # does not rewind it), and different numbers.
    assert again == first
    assert set(first) == set(HEADLINE_KEYS)
    for row in (first, soft):
        assert all(v is not None and math.isfinite(v) for v in row.values()), row
        assert 0 <= row["dead_latents"] <= 64
    assert first["l0"] == pytest.approx(4.0)
    assert 1 <= soft["l0"] <= 8


def test_store_refuses_a_budget_bigger_than_the_heldout_split(model, text):
    budget = EvalBudget(ce_batches=text.heldout.num_rows, batch_prompts=2, context_size=CTX)
    with pytest.raises(ValueError, match="held-out rows per SAE but only"):
        heldout_store(model, text.heldout, HOOK, TINY_D_MODEL, budget)


def test_k_statistics_leave_special_tokens_out(model, text):
    budget = EvalBudget(context_size=CTX, k_report_docs=3, k_report_tokens=CTX)
    stats, records = soft_k_statistics(model, _soft(), text.heldout_documents, budget)
    special = [r.excluded for r in records]
    assert sum(special) >= 3  # at least every document's BOS
    assert all(r.excluded for r in records if r.position == 0)
    assert stats["count"] == len(records) - sum(special)
    assert stats["special_tokens_excluded"] == sum(special)
    plain = torch.tensor(
        [r.k_hat for r, s in zip(records, special, strict=True) if not s], dtype=torch.float64
    )
    assert stats["mean"] == pytest.approx(plain.mean().item())
    assert 1 <= stats["median"] <= 8
    for key in ("spearman_with_next_token_loss", "spearman_with_token_surprisal"):
        assert stats[key]["n"] > 0
    with pytest.raises(ValueError, match="no held-out documents"):
        soft_k_statistics(model, _soft(), ["   "], budget)
