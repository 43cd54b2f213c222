"""Where a SoftSAE's held-out L0 leaves its target: the raw k-estimator's mean on slices of the stream.

Prints JSON, one record per saved SoftSAE of a sweep: its inference factor ``k_scale`` and the mean
raw prediction ``k_hat / k_scale`` (special tokens excluded) on random training rows among the ones
the run read, on the run's last training rows (where the hard phase estimates ``k_scale``), on random
held-out rows, and on the held-out rows the sweep evaluates (the first 48).

    python benchmarks/k_budget_stream_shift.py out/l0/sweep_2x/saes/soft-16 --tokens 200000
"""

from __future__ import annotations

import argparse
import json
import random


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("saes", nargs="+", help="saved SoftSAE folders of one sweep")
    p.add_argument("--tokens", type=int, default=100_000, help="the sweep's training tokens")
    p.add_argument("--rows", type=int, default=96, help="rows per slice")
    args = p.parse_args()

    import torch
    from sae_lens import SAE
    from sae_lens.util import get_special_token_ids

    import softsae_lens  # noqa: F401  (registers "soft")
    from softsae_lens.experiments.sweep.config import SweepConfig
    from softsae_lens.experiments.sweep.run import load_text
    from softsae_lens.models import load_model_and_hook

    torch.set_num_threads(1)
    cfg = SweepConfig()
    model, hook, _ = load_model_and_hook()
    text = load_text(cfg, model)
    special = torch.tensor(get_special_token_ids(model.tokenizer))
    read = args.tokens // cfg.context_size

    @torch.no_grad()
    def activations(dataset, rows):
        out = []
        for i in range(0, len(rows), 16):
            tokens = dataset.select(rows[i : i + 16]).with_format("torch")[:]["tokens"]
            _, cache = model.run_with_cache(
                tokens, names_filter=[hook], stop_at_layer=cfg.layer + 1, prepend_bos=False
            )
            out.append(cache[hook][~torch.isin(tokens, special)].float())
        return torch.cat(out)

    rng = random.Random(0)
    slices = {
        "train_random": activations(text.train, sorted(rng.sample(range(read), args.rows))),
        "train_last": activations(text.train, list(range(read - args.rows, read))),
        "heldout_random": activations(
            text.heldout, sorted(rng.sample(range(text.heldout.num_rows), args.rows))
        ),
        "heldout_evaluated": activations(text.heldout, list(range(48))),
    }
    for path in args.saes:
        sae = SAE.load_from_disk(path)
        with torch.no_grad():
            raw = {
                name: round((sae.predict_k(acts) / sae.k_scale).mean().item(), 2)
                for name, acts in slices.items()
            }
        print(
            json.dumps(
                {
                    "sae": path,
                    "k": sae.cfg.k,
                    "k_scale": round(sae.k_scale.item(), 4),
                    "raw_k_mean": raw,
                }
            )
        )


if __name__ == "__main__":
    main()
