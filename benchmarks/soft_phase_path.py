"""Which path a SoftSAE's soft phase takes on real activations, and its step time, per alpha floor.

The soft phase serves a batch from each row's top ``k_max + 32`` pre-activations when every
left-out Soft Top-K weight is below float32 rounding, and takes the dense path otherwise
(``SoftTrainingSAE._soft_phase_output``). Random inputs (the speed benchmark's) take the candidate
path; this trains SoftSAEs on SmolLM2-135M's layer-5 activations of the local text (the sweep's
size: d_sae 2304, k 32, batches of 1,024 tokens, Adam at lr 1e-3, SAELens's grad-norm clip) and
prints JSON per floor: the fraction of soft-phase steps (after the first 10) that took the
candidate path, their median wall time, and at the last soft step the hard top-k's reconstruction
error over the soft one (what the switch to the inference selection will cost).

    python benchmarks/soft_phase_path.py --steps 300 --alpha-ends 0.01 0.05
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per SoftSAE")
    p.add_argument("--alpha-ends", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--rows", type=int, default=320, help="training rows of 128 tokens to cache")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.util import get_special_token_ids

    from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig
    from softsae_lens.data.corpus import load_corpus, tokenize_corpus
    from softsae_lens.models import load_model_and_hook

    torch.set_num_threads(args.threads)
    model, hook, _ = load_model_and_hook(None, 5, "cpu", None)
    corpus = tokenize_corpus(
        load_corpus(("pydoc", "stdlib-doc", "stdlib-src")),
        model.tokenizer,
        context_size=128,
        seed=0,
    )
    ids = torch.tensor(corpus.train[: args.rows]["tokens"])
    special = torch.tensor(get_special_token_ids(model.tokenizer))
    chunks = []
    with torch.no_grad():
        for batch in ids.split(16):
            _, cache = model.run_with_cache(batch, names_filter=[hook])
            chunks.append(cache[hook][~torch.isin(batch, special)])
    acts = torch.cat(chunks).float()
    d_in = acts.shape[-1]
    acts *= d_in**0.5 / acts.norm(dim=-1).mean()  # SAELens's expected_average_only_in

    for alpha_end in args.alpha_ends:
        torch.manual_seed(0)
        cfg = SoftTrainingSAEConfig(
            d_in=d_in, d_sae=4 * d_in, k=32, total_training_steps=args.steps, alpha_end=alpha_end
        )
        sae = SoftTrainingSAE(cfg)
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
        candidates, seconds = [], []
        for step in range(args.steps):
            x = acts[torch.randint(0, acts.shape[0], (1024,))]
            start = time.perf_counter()
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x,
                    coefficients={},
                    dead_neuron_mask=None,
                    n_training_steps=step,
                    is_logging_step=True,  # the hard selection's error is computed to be logged
                )
            )
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            elapsed = time.perf_counter() - start
            if not out.metrics["softsae/hard_phase"] and step >= 10:
                candidates.append(int(out.metrics["softsae/candidates_only"]))
                seconds.append(elapsed)
                hard_over_soft = (
                    out.metrics["softsae/hard_selection_mse"] / out.losses["mse_loss"]
                ).item()
        seconds.sort()
        print(
            json.dumps(
                {
                    "alpha_end": alpha_end,
                    "soft_steps": len(candidates),
                    "candidate_path_fraction": sum(candidates) / len(candidates),
                    "median_soft_step_s": seconds[len(seconds) // 2],
                    "last_soft_step_hard_over_soft_mse": round(hard_over_soft, 4),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
