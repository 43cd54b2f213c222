"""What a SAELens run reads from a pre-tokenised corpus: how many tokens its activation stream
pulls (so a run can be checked against the training split before it starts), and the warnings
such a dataset always triggers in SAELens's ``ActivationsStore``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["pretokenized_warnings_ignored", "runner_stream_tokens", "stream_tokens_needed"]


def stream_tokens_needed(
    training_tokens: int,
    train_batch_size_tokens: int,
    context_size: int,
    n_batches_in_buffer: int,
    store_batch_size_prompts: int,
    n_batches_for_norm_estimate: int = 0,
) -> int:
    """Upper bound on the tokens a SAELens training run pulls from its dataset.

    The trainer consumes ``training_tokens``; estimating the activation scale first takes
    ``n_batches_for_norm_estimate`` batches that are not counted as training; and the mixing
    buffer reads up to ``n_batches_in_buffer * context_size`` tokens plus one store batch
    ahead of what it serves.
    """
    return (
        training_tokens
        + n_batches_for_norm_estimate * train_batch_size_tokens
        + (n_batches_in_buffer + store_batch_size_prompts) * context_size
    )


def runner_stream_tokens(runner_cfg: Any) -> int:
    """:func:`stream_tokens_needed` for a SAELens runner config (single- or multi-SAE)."""
    return stream_tokens_needed(
        runner_cfg.training_tokens,
        runner_cfg.train_batch_size_tokens,
        runner_cfg.context_size,
        runner_cfg.n_batches_in_buffer,
        runner_cfg.store_batch_size_prompts,
        runner_cfg.n_batches_for_norm_estimate,
    )


@contextmanager
def pretokenized_warnings_ignored() -> Iterator[None]:
    """Silence two SAELens warnings that a pre-tokenised dataset always triggers.

    * ``ActivationsStore.__init__`` compares ``len(dataset)`` with ``total_training_tokens``,
      rows against tokens, so a dataset of 128-token rows always "contains fewer samples" than
      the run needs, even when it holds many times the tokens. Call
      :meth:`~softsae_lens.data.corpus.TokenCorpus.check_budget` first: it checks in tokens.
    * ``ActivationsStore._iterate_tokenized_sequences`` wraps each row, already a tensor once
      it sets the dataset's format to torch, in ``torch.tensor(...)``, which warns about
      copy-constructing a tensor on every row.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The training dataset contains fewer samples", category=UserWarning
        )
        warnings.filterwarnings(
            "ignore", message="To copy construct from a tensor", category=UserWarning
        )
        yield
