"""``python -m softsae_lens.train_activations --activations PATH ...``: train an SAE on arrays on disk.

Any SAELens training architecture (``--architecture soft|topk|batchtopk|standard|...``) trains
on activations stored as arrays (:mod:`softsae_lens.data.activations`: ``.npy``, ``.safetensors``,
``.pt``, a folder of shards, or a ``CacheActivationsRunner`` folder) through SAELens's own
``SAETrainer`` with a data provider, so learning-rate schedules, checkpoints, wandb logging,
``normalize_activations`` and the saved format are those of the language-model path. Nothing
here knows where the activations came from: a language model's residual stream, sentence
embeddings or image embeddings all go the same way.

A seeded random part of the rows (``eval_fraction``, at most ``max_eval_rows``; or a separate
``eval_activations`` source) is held out; after training the saved inference SAE is reloaded
and reports explained variance, MSE, L0, dead latents and, for SoftSAEs, the distribution of
the predicted ``k_hat`` on it.

The Python entry point is :func:`softsae_lens.training.on_arrays.train_on_activations`
(:func:`softsae_lens.evals.heldout.evaluate_on_rows` scores any SAE on any rows).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

from sae_lens import TrainingSAEConfig

from softsae_lens.data.activations import open_activations
from softsae_lens.flags import spell_flags
from softsae_lens.training.interrupt import TrainingInterrupted
from softsae_lens.training.on_arrays import (
    ActivationsRun,
    ActivationsRunnerConfig,
    train_on_activations,
)

__all__ = ["main", "parse_args"]


def _probe_width(argv: Sequence[str]) -> int | None:
    """The activations' width, read before the full parse so ``d_in`` can default to it."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--activations")
    probe.add_argument("--key")
    known, _ = probe.parse_known_args(argv)
    if known.activations is None:
        return None
    return open_activations(known.activations, known.key, "--activations").d_in


def parse_args(argv: Sequence[str]) -> ActivationsRunnerConfig[Any]:
    """Parse command-line arguments into an :class:`ActivationsRunnerConfig`.

    ``--architecture`` picks any registered SAELens training architecture (default soft) and
    brings its config's fields as flags; ``--d_in`` defaults to the activations' width and
    ``--d_sae`` to 8 x d_in. Uses SAELens's own ``simple_parsing`` subgroups, as its CLI does.
    """
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
    from simple_parsing import ArgumentParser, subgroups

    import softsae_lens  # noqa: F401  (registers "soft" before the registry is read)

    argv = spell_flags(argv, "_") or ["--help"]  # --d-sae works as --d_sae
    d_in = _probe_width(argv) or 512
    choices = {
        name: partial(config_class, d_in=d_in, d_sae=8 * d_in)
        for name, (_, config_class) in SAE_TRAINING_CLASS_REGISTRY.items()
    }
    cli_class = dataclasses.make_dataclass(
        "ActivationsCommandLineConfig",
        [("sae", TrainingSAEConfig, subgroups(choices, default="soft", alias="--architecture"))],
        bases=(ActivationsRunnerConfig,),
    )
    parser = ArgumentParser(
        prog="python -m softsae_lens.train_activations",
        description=__doc__.split("\n\n")[0]
        + " Flags of the chosen --architecture are listed by `--architecture NAME --help`.",
        exit_on_error=False,
    )
    parser.add_arguments(cli_class, dest="cfg")
    return parser.parse_args(argv).cfg


def _format_metrics(metrics: dict[str, Any]) -> str:
    lines = [f"{'architecture':<30}{metrics['architecture']}"]
    for name in ("explained_variance", "mse", "cossim", "l0", "dead_latents", "n_rows"):
        if name in metrics:
            value = metrics[name]
            lines.append(
                f"{'held-out ' + name:<30}{value:.4g}"
                if isinstance(value, float)
                else f"{'held-out ' + name:<30}{value}"
            )
    for name in ("l0_dist", "k_hat"):
        if name in metrics:
            d = metrics[name]
            lines.append(
                f"{'held-out ' + name:<30}" + "  ".join(f"{k} {v:.3g}" for k, v in d.items())
            )
    for name in ("training_steps", "training_samples", "passes", "dead_latents_training_window"):
        lines.append(f"{name:<30}{metrics[name]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> ActivationsRun:
    """Parse the arguments, train, print the held-out metrics."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_args(argv)
        run = train_on_activations(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except TrainingInterrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    print(_format_metrics(run.metrics))
    if run.output_path is not None:
        print(f"saved to {run.output_path}")
    return run


if __name__ == "__main__":
    main()
