"""The decoder bias started at the activations' mean (``softsae_lens.training.decoder_bias``)."""

import math

import pytest
import torch
from helpers import HOOK, build_tiny_model, make_training_sae, token_dataset
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from softsae_lens.training.decoder_bias import (
    ActivationMean,
    activation_mean,
    start_decoder_bias_at_mean,
)


def test_the_mean_leaves_out_the_excluded_tokens_and_matches_a_direct_average():
    model = build_tiny_model()
    ids = torch.tensor(token_dataset(n_rows=6)["tokens"])
    ids[:, 0] = 1  # a "special" token at the start of every row
    mean = activation_mean(model, HOOK, ids.split(4), exclude_token_ids=[1])
    _, cache = model.run_with_cache(ids, names_filter=[HOOK])
    acts = cache[HOOK][ids != 1]
    assert mean.tokens == acts.shape[0] < ids.numel()
    torch.testing.assert_close(mean.mean, acts.mean(0), rtol=1e-5, atol=1e-6)
    assert mean.mean_norm == pytest.approx(float(acts.norm(dim=-1).mean()), rel=1e-5)


def test_every_sae_starts_at_the_mean_in_the_units_its_trainer_feeds_it():
    d_in = 32
    soft = make_training_sae(d_in=d_in, normalize_activations="expected_average_only_in")
    topk = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=64, k=4))  # "none"
    mean = torch.randn(d_in)
    start_decoder_bias_at_mean({"soft": soft, "topk": topk}, ActivationMean(mean, 10.0, 100))
    torch.testing.assert_close(soft.b_dec.detach(), mean * math.sqrt(d_in) / 10.0)
    torch.testing.assert_close(topk.b_dec.detach(), mean)


def test_a_normalisation_it_cannot_undo_is_refused():
    sae = make_training_sae(normalize_activations="layer_norm")
    with pytest.raises(ValueError, match="normalize_activations='layer_norm'"):
        start_decoder_bias_at_mean({"soft": sae}, ActivationMean(torch.zeros(32), 1.0, 1))


def test_no_token_left_is_an_error():
    model = build_tiny_model()
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="no token left"):
        activation_mean(model, HOOK, [ids], exclude_token_ids=[1])


def test_the_sweep_starts_every_architecture_at_the_pilot_mean_before_calibrating():
    from softsae_lens.experiments.sweep.config import SweepConfig
    from softsae_lens.experiments.sweep.run import build_saes, sae_configs

    d_in = 32
    cfg = SweepConfig(architectures=("soft", "topk", "jumprelu", "matching_pursuit"), targets=(4,))
    cfg.b_dec_init = "mean"
    pilot = torch.randn(512, d_in) + 3.0  # a mean far from zero
    saes, knobs = build_saes(cfg, sae_configs(cfg, d_in, 64), pilot)
    for name, sae in saes.items():
        torch.testing.assert_close(sae.b_dec.detach(), pilot.mean(0), msg=name)
    jumprelu = next(sae for name, sae in saes.items() if name.startswith("jumprelu"))
    # The threshold was calibrated on pre-activations of the centred pilot: about 4 of 64 fire.
    l0 = (jumprelu.encode(pilot) > 0).sum(-1).float().mean()
    assert 2.0 <= float(l0) <= 8.0
    cfg.b_dec_init = "zeros"
    for sae in build_saes(cfg, sae_configs(cfg, d_in, 64), pilot)[0].values():
        assert not sae.b_dec.detach().any()


def test_the_demo_starts_at_the_mean_of_its_first_training_rows_on_a_bridge(tmp_path):
    """The path without a pilot (the demo's): a forward that stops at the hook's block, and
    the special tokens SAELens's runner drops from the stream left out."""
    from helpers import build_tiny_hf_model
    from sae_lens.util import get_special_token_ids

    from softsae_lens.data.corpus import load_corpus, tokenize_corpus
    from softsae_lens.experiments.sweep.saes import start_at_training_mean
    from softsae_lens.models.local import load_bridge

    model = load_bridge(build_tiny_hf_model(tmp_path / "model"), device="cpu")
    hook = "blocks.0.hook_out"
    text = tokenize_corpus(
        load_corpus(("pydoc",)), model.tokenizer, context_size=32, cache_root=tmp_path / "c"
    )
    sae = make_training_sae(d_in=32, normalize_activations="expected_average_only_in")
    start_at_training_mean({"soft": sae}, model, hook, text, "test", rows=4)

    ids = torch.tensor(text.train[:4]["tokens"])
    _, cache = model.run_with_cache(ids, names_filter=[hook])  # a full forward
    keep = ~torch.isin(ids, torch.tensor(get_special_token_ids(model.tokenizer)))
    acts = cache[hook][keep].float()
    want = acts.mean(0) * math.sqrt(32) / acts.norm(dim=-1).mean()
    torch.testing.assert_close(sae.b_dec.detach(), want, rtol=1e-4, atol=1e-5)
