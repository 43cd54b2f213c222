"""SoftSAE against TopK where each input holds more true features than k, per alpha floor.

SoftSAE learns under Soft Top-K weights and switches to the hard per-row top-k of inference for
the last ``hard_topk_fraction`` of its steps. The floor of the Laplace scale, ``alpha_end``, keeps
the weights of latents just below each row's threshold away from 0. Where an input holds many more
true features than ``k``, those near-threshold latents carry real signal during the soft phase,
and the switch takes it away. This trains on SAELens's toy generator (64 features in 32 dims,
every feature firing with the same probability, so the true L0 is ``64 * p``) at k 8 and prints
JSON per setting: held-out explained variance and L0 of the inference SAE, mean and spread over
seeds. ``--hard-selection-coefficients`` adds SoftSAE runs that also train the hard selection in the
soft phase (``hard_selection_loss_coefficient``).

    python benchmarks/dense_inputs_floor.py --true-l0 8 16 24 --floors 0.01 0.03 0.05 \
        --hard-fractions 0.04 0.25 --seeds 0 1 2
    python benchmarks/dense_inputs_floor.py --true-l0 8 16 24 --floors 0.05 \
        --hard-selection-coefficients 0 0.1 1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics

N_FEATURES, D_IN, D_SAE, K, BATCH = 64, 32, 128, 8, 256


def _settings(
    floors: list[float], hard_fractions: list[float], coefficients: list[float]
) -> list[tuple[str, dict]]:
    out = [("topk", {})]
    for floor in floors:
        for hard in hard_fractions:
            for coefficient in coefficients:
                name = f"soft alpha_end={floor} hard_topk_fraction={hard}"
                if coefficient:
                    name += f" hard_selection_loss_coefficient={coefficient}"
                overrides = {"alpha_end": floor, "hard_topk_fraction": hard}
                out.append((name, overrides | {"hard_selection_loss_coefficient": coefficient}))
    return out


def _train_and_score(name: str, overrides: dict, true_l0: float, seed: int, steps: int):
    import torch
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, train_toy_sae

    from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig

    torch.manual_seed(seed)
    features = FeatureDictionary(N_FEATURES, D_IN, seed=seed)
    firing = torch.full((N_FEATURES,), true_l0 / N_FEATURES)
    generator = ActivationGenerator(num_features=N_FEATURES, firing_probabilities=firing)
    if name == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    else:
        cfg = SoftTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, total_training_steps=steps, **overrides
        )
        sae = SoftTrainingSAE(cfg)
    train_toy_sae(
        sae, features, generator, training_samples=steps * BATCH, batch_size=BATCH, lr=3e-3
    )
    sae.eval()
    with torch.no_grad():
        x = features(generator(4096))
        recon = sae(x)
        ev = 1 - (recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        l0 = (sae.encode(x) != 0).sum(-1).float().mean()
    return ev.item(), l0.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--true-l0", type=float, nargs="+", default=[8, 16, 24])
    p.add_argument("--floors", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    p.add_argument("--hard-fractions", type=float, nargs="+", default=[0.04])
    p.add_argument("--hard-selection-coefficients", type=float, nargs="+", default=[0.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)
    settings = _settings(args.floors, args.hard_fractions, args.hard_selection_coefficients)
    jobs = [(t, s, n, o) for t in args.true_l0 for n, o in settings for s in args.seeds]
    rows: dict[tuple[float, str], list[tuple[float, float]]] = {}
    for true_l0, seed, name, overrides in tqdm(jobs, desc="SAEs"):
        scores = _train_and_score(name, overrides, true_l0, seed, args.steps)
        rows.setdefault((true_l0, name), []).append(scores)

    def spread(values: list[float]) -> dict:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": round(statistics.mean(values), 4), "std": round(sd, 4)}

    results = [
        {
            "true_l0": true_l0,
            "k": K,
            "sae": name,
            "explained_variance": spread([ev for ev, _ in scores]),
            "l0": spread([l0 for _, l0 in scores]),
        }
        for (true_l0, name), scores in rows.items()
    ]
    print(json.dumps({"steps": args.steps, "seeds": args.seeds, "results": results}, indent=1))


if __name__ == "__main__":
    main()
