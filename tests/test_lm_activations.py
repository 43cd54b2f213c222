"""Activations of a language model cached on disk (softsae_lens.data.lm_activations)."""

import threading

import numpy as np
import pytest
import torch
from helpers import tiny_lm

from softsae_lens.data.lm_activations import cache_lm_activations

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_lm()


def _tokens(model, rows=6, ctx=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.cfg.d_vocab, (rows, ctx), generator=g)


def test_cached_rows_are_the_hooks_activations_in_order_without_the_left_out_tokens(
    model, tmp_path
):
    tokens = _tokens(model)
    tokens[:, 0] = 1  # a "special" token at each row's start, left out as SAELens's stream does
    path = cache_lm_activations(
        model, HOOK, tokens, tmp_path, "tiny", n_rows=50, exclude_token_ids=[1], batch_rows=4
    )
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    expected = cache[HOOK][tokens != 1][:50]
    got = np.load(path)
    assert got.shape == (50, model.cfg.d_model) and got.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(got), expected.float(), rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob("*.partial.npy"))


def test_a_present_file_is_reused_and_other_inputs_get_another_file(model, tmp_path):
    tokens = _tokens(model)
    first = cache_lm_activations(model, HOOK, tokens, tmp_path, "tiny", progress=False)
    stamp = first.stat().st_mtime_ns
    again = cache_lm_activations(model, HOOK, tokens.clone(), tmp_path, "tiny", progress=False)
    assert again == first and first.stat().st_mtime_ns == stamp
    other = tokens.clone()
    other[0, 3] += 1
    assert cache_lm_activations(model, HOOK, other, tmp_path, "tiny", progress=False) != first
    assert cache_lm_activations(model, HOOK, tokens, tmp_path, "tiny", n_rows=10) != first


def test_concurrent_callers_compute_the_file_once(model, tmp_path):
    tokens = _tokens(model, rows=8)
    forwards = []
    run_with_cache = model.run_with_cache

    def counted(*args, **kwargs):
        forwards.append(threading.get_ident())
        return run_with_cache(*args, **kwargs)

    model.run_with_cache = counted
    try:
        paths = []
        threads = [
            threading.Thread(
                target=lambda: paths.append(
                    cache_lm_activations(
                        model, HOOK, tokens, tmp_path, "tiny", batch_rows=2, progress=False
                    )
                )
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del model.run_with_cache
    assert len(paths) == 2 and paths[0] == paths[1]
    assert len(forwards) == 4 and len(set(forwards)) == 1  # one pass, by one caller
    assert np.load(paths[0]).shape[0] == tokens.numel()


def test_more_rows_than_the_tokens_hold_is_refused_by_name(model, tmp_path):
    tokens = _tokens(model, rows=2, ctx=8)
    tokens[:, 0] = 1
    with pytest.raises(ValueError, match=r"n_rows=17: must be between 1 and the 16 tokens"):
        cache_lm_activations(model, HOOK, tokens, tmp_path, "tiny", n_rows=17)
    with pytest.raises(ValueError, match=r"n_rows=15: must be between 1 and the 14 tokens"):
        cache_lm_activations(
            model, HOOK, tokens, tmp_path, "tiny", n_rows=15, exclude_token_ids=[1]
        )
    assert not list(tmp_path.glob("*.npy"))
