"""The run: model and text -> (quick: cache activations, train tiny SAEs) -> every eval -> report.

Runs in SAEBench's environment (``make saebench-env``). Training goes through the package's own
pipeline (:func:`softsae_lens.training.on_arrays.train_on_activations` on activations cached as a
``.npy`` read by :func:`softsae_lens.data.activations.open_activations`; the sweep's
``sae_config`` gives each architecture's config), not a second copy of it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softsae_lens.experiments.saebench.config import (
    ARCHITECTURES,
    EVALS,
    TARGETS,
    SaebenchConfig,
)
from softsae_lens.training.checkpoints import write_atomically

__all__ = ["PER_SAE", "discover_saes", "plan", "run"]

# one results file per SAE, written as each SAE finishes: a stopped run keeps what it finished,
# and runs on disjoint SAEs (one per core) write one report together
PER_SAE = "per_sae"

DEFAULT_SAES = Path("out/sweep/saes")
# SmolLM2 on this 2-core machine, one thread (December 2026, machine busy with other jobs): the
# sweep's --plan-only measured 0.47 s per 1k tokens to blocks.5; this runner measured core at
# 60 s per SAE for its 16k token-forwards (270 tokens/s), and sae-probes' padded, batched
# activations of 96_spam_is (1,494 rows) at ~70 s (~570 tokens/s).
SMOLLM2_TOKENS_PER_S_LAYER5 = 2100.0
SMOLLM2_TOKENS_PER_S_FULL = 270.0
SAE_PROBES_TOKENS_PER_S = 570.0
# sae-probes embeds every row of a dataset (it keeps 1,500): rows x mean tokens (capped by the
# context) per dataset, from the wheel's csv files; others are assumed 4,000 x 60
PROBE_DATASET_TOKENS = {
    "96_spam_is": 1494 * 27,
    "113_movie_sent": 5000 * 29,
    "5_hist_fig_ismale": 5000 * 6,
    "158_code_C": 4000 * 128,
    "160_code_HTML": 4000 * 128,
    "161_agnews_0": 4000 * 128,
}
# absorption's ground-truth probe embeds 47,078 spelling prompts of SmolLM2's alphabetic
# vocabulary (37,662 train + 9,416 test) in batches of 64 with full forwards through the bridge:
# measured 21 s per batch here (machine busy), i.e. ~4.3 h once per model and layer. Absorption
# now runs its forwards only to the SAE's block (evals.ForwardToHookLayer): at layer 5 that is
# 6 of 30 blocks and no unembedding, ~16% of the multiply-adds per token (blocks ~4.0M each,
# unembedding 28.3M); the prediction scales by that, not re-measured
# (measured since, 3-4 processes on the 2 cores: 589 + 148 batches at 3.5-8.8 s, ~60 min).
ABSORPTION_PROMPTS = 47_078
ABSORPTION_S_PER_64_PROMPTS = 21.0 * (6 * 4.0 / (30 * 4.0 + 28.3))
# Per SAE, measured on the 2M SAEs (d_sae 2,304) with 3-4 processes on the 2 cores: 260
# k-sparse probes (26 letters x k up to 10) at 3.3-4.4 s each, then the absorption pass, 26
# letters at 30-60 s each: ~30-45 min per SAE (the estimate before, two passes over the
# vocabulary at the model's speed, was 260 s: the probes, not the model, dominate)
ABSORPTION_K_PROBES = 260
ABSORPTION_S_PER_K_PROBE = 3.3
ABSORPTION_S_PER_LETTER = 35.0


def discover_saes(paths: list[Path]) -> dict[str, Path]:
    """Every SAE folder (one holding ``cfg.json``) under ``paths``, by folder name."""
    found: dict[str, Path] = {}
    for root in paths:
        candidates = [root] if (root / "cfg.json").exists() else sorted(root.glob("*/"))
        for folder in candidates:
            if (folder / "cfg.json").exists():
                found[folder.name] = folder
    return found


def plan(cfg: SaebenchConfig, n_saes: int | None = None) -> dict[str, Any]:
    """Predicted seconds of each piece for SmolLM2 on this machine (not for --quick): model
    forwards from NOTES' measured throughput, per-SAE probe/meta costs scaled from quick mode
    (sae-probes ~0.4 s per dataset and k; meta_structure ~3.5 ms per step at 256 latents, ~9x at
    2,304), absorption from its two passes over SmolLM2's alphabetic vocabulary."""
    n = n_saes if n_saes is not None else len(ARCHITECTURES) * len(TARGETS)
    core_tokens = cfg.batch_prompts * cfg.context_size
    per_sae = {
        # clean, spliced and zero-ablated forwards, then the variance/L0 batches
        "core": (3 * cfg.core_reconstruction_batches + cfg.core_variance_batches)
        * core_tokens
        / SMOLLM2_TOKENS_PER_S_FULL,
        "sparse_probing_sae_probes": 0.5 * len(cfg.probe_datasets) * len(cfg.probe_ks),
        "absorption": ABSORPTION_K_PROBES * ABSORPTION_S_PER_K_PROBE + 26 * ABSORPTION_S_PER_LETTER,
        "meta_structure": cfg.meta_train_steps * 0.03,
        "mdl": 20.0 * len(cfg.mdl_num_bins) * len(cfg.mdl_k_values),
    }
    once = {"model load and k_hat activations": 20.0 + 20_000 / SMOLLM2_TOKENS_PER_S_LAYER5}
    if "absorption" in cfg.evals:
        once["absorption first-letter probe"] = (
            ABSORPTION_PROMPTS / 64 * ABSORPTION_S_PER_64_PROMPTS
        )
    if "sparse_probing_sae_probes" in cfg.evals:
        tokens = sum(PROBE_DATASET_TOKENS.get(d, 4000 * 60) for d in cfg.probe_datasets)
        once["sae-probes model activations"] = tokens / SAE_PROBES_TOKENS_PER_S
    pieces = {**once, **{f"{k} (per SAE)": v for k, v in per_sae.items() if k in cfg.evals}}
    total = sum(once.values()) + n * sum(v for k, v in per_sae.items() if k in cfg.evals)
    return {"n_saes": n, "pieces_s": pieces, "total_s": total}


def _print_plan(cfg: SaebenchConfig, n: int | None) -> None:
    p = plan(cfg, n)
    print(f"predicted cost for {p['n_saes']} SAEs on SmolLM2 (this 2-core machine, 1 thread):")
    for k, v in p["pieces_s"].items():
        print(f"  {k:40s} {v:8.0f} s")
    print(f"  {'total':40s} {p['total_s']:8.0f} s ({p['total_s'] / 3600:.1f} h)")


def _tokens(tokenizer: Any, docs: list[str], ctx: int, n_tokens: int) -> torch.Tensor:
    """Documents joined and cut into rows of ``ctx`` tokens, BOS first, at most n_tokens."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if len(ids) >= n_tokens:
            break
    body = ctx - 1
    n_rows = max(1, min(len(ids), n_tokens) // body)
    rows = torch.tensor(ids[: n_rows * body]).view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), bos), rows], dim=1)


def cache_activations(
    model: Any, hook: str, docs: list[str], n_tokens: int, ctx: int, folder: Path, key: str
) -> Path:
    """Activations of ``hook`` on ``docs`` (at most ``n_tokens``, BOS first in every row) as a
    .npy, through the package's cache (:mod:`softsae_lens.data.lm_activations`): keyed by model,
    hook and token ids, computed once and reused, shared by concurrent runs."""
    from softsae_lens.data.lm_activations import cache_lm_activations

    toks = _tokens(model.tokenizer, docs, ctx, n_tokens)
    return cache_lm_activations(model, hook, toks, folder, key, progress=False)


def train_quick(cfg: SaebenchConfig, acts: Path, d_in: int, hook: str, model_name: str):
    """Tiny SAEs of every quick architecture and target, through the package's pipeline."""
    from softsae_lens.data.activations import open_activations
    from softsae_lens.experiments.sweep.config import SweepConfig, sae_config
    from softsae_lens.training.on_arrays import ActivationsRunnerConfig, train_on_activations

    sweep_cfg = SweepConfig(device=cfg.device)
    n_rows = open_activations(acts).n_rows
    batch = 512
    steps = max(20, 3 * n_rows // batch)
    saes, seconds = {}, {}
    for arch in cfg.quick_architectures:
        for target in cfg.quick_targets:
            name = f"{arch}-{target}"
            start = time.perf_counter()
            run = train_on_activations(
                ActivationsRunnerConfig(
                    sae=sae_config(arch, target, d_in, 4 * d_in, sweep_cfg),
                    activations=str(acts),
                    train_batch_size=batch,
                    training_samples=steps * batch,
                    lr=1e-3,
                    output_path=str(cfg.out / "saes" / name),
                    overwrite=True,  # seeded: a rerun trains the same weights
                    seed=cfg.seed,
                    model_name=model_name,
                    hook_name=hook,
                ),
                progress=False,
            )
            saes[name] = run.output_path
            seconds[name] = time.perf_counter() - start
    return saes, seconds


def _k_hat_stats(sae: Any, acts: Path) -> dict[str, Any] | None:
    from softsae_lens.data.activations import open_activations
    from softsae_lens.evals.heldout import evaluate_on_rows

    if not hasattr(sae, "predict_k"):
        return None
    rows = open_activations(acts)
    m = evaluate_on_rows(sae, rows, np.arange(min(rows.n_rows, 20_000)))
    return {"k_hat": m["k_hat"], "l0": m["l0"], "explained_variance": m["explained_variance"]}


def run(cfg: SaebenchConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    if cfg.plan_only:
        n = None if cfg.quick else (len(discover_saes(cfg.saes or [DEFAULT_SAES])) or None)
        _print_plan(cfg, n)
        return {}
    import datasets
    from sae_lens import SAE

    import softsae_lens  # noqa: F401  registers "soft" with SAELens
    from softsae_lens.experiments.saebench import local_model
    from softsae_lens.experiments.saebench.evals import prepare_sae, run_one
    from softsae_lens.experiments.saebench.report import write_outputs

    (cfg.out / PER_SAE).mkdir(parents=True, exist_ok=True)
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    docs = local_model.local_text()
    cut = max(1, int(0.9 * len(docs)))
    train_docs, eval_docs = docs[:cut], docs[cut:]
    if cfg.quick:
        model = local_model.tiny_model(
            train_docs + local_model.probe_texts(list(cfg.probe_datasets)), cfg.seed
        )
        model_name, hook = "tiny-random", local_model.TINY_HOOK
    else:
        model = local_model.smollm2_model(cfg.device)
        model_name, hook = "SmolLM2-135M-Instruct", None
    timings["model_load_s"] = time.perf_counter() - start
    eval_dataset = datasets.Dataset.from_dict({"text": eval_docs})

    if cfg.quick:
        t = time.perf_counter()
        acts = cache_activations(
            model,
            hook,
            train_docs,
            cfg.quick_tokens,
            cfg.context_size,
            cfg.out / "cache",
            model_name,
        )
        timings["cache_s"] = time.perf_counter() - t
        t = time.perf_counter()
        sae_paths, timings["train_s"] = train_quick(cfg, acts, model.cfg.d_model, hook, model_name)
        timings["train_total_s"] = time.perf_counter() - t
    else:
        sae_paths = discover_saes(cfg.saes or [DEFAULT_SAES])
        if not sae_paths:
            raise SystemExit(f"no SAE folders under {cfg.saes or [DEFAULT_SAES]}")

    results: dict[str, Any] = {"config": _jsonable(vars(cfg)), "saes": {}, "timings": timings}
    kh_cache: dict[str, Path] = {}
    for name, path in sae_paths.items():
        earlier = _earlier_result(cfg, name, path)
        todo = [
            e
            for e in EVALS
            if e in cfg.evals
            and (earlier is None or earlier["evals"].get(e, {"error": "absent"})["error"])
        ]
        if earlier is not None and not todo:
            print(f"[saebench] {name}: every eval done by an earlier run, kept", flush=True)
            results["saes"][name] = earlier
            continue
        sae = SAE.load_from_disk(str(path), device=cfg.device)
        if hook is None:
            from softsae_lens.models.local import resolve_hook_name

            sae.cfg.metadata.hook_name = resolve_hook_name(model, sae.cfg.metadata.hook_name)
        sae_hook = sae.cfg.metadata.hook_name
        sae = prepare_sae(name, sae, model_name, cfg)
        arch, _, target = name.rpartition("-")
        entry: dict[str, Any] = earlier or {
            "architecture": arch or sae.cfg.architecture(),
            "target_l0": int(target) if target.isdigit() else None,
            "path": str(path),
            "weights_sha256": _weights_digest(path),
            "evals": {},
        }
        entry["decoder_norms_folded"] = True  # prepare_sae folded them (a no-op on unit rows)
        if sae_hook not in kh_cache:
            kh_cache[sae_hook] = cache_activations(
                model, sae_hook, eval_docs, 20_000, cfg.context_size, cfg.out / "cache", model_name
            )
        entry["k_hat"] = _k_hat_stats(sae, kh_cache[sae_hook])
        for eval_name in todo:
            print(f"[saebench] {name}: {eval_name}", flush=True)
            entry["evals"][eval_name] = run_one(
                eval_name, name, sae, model, eval_dataset, cfg, cfg.out / "work"
            )
            r = entry["evals"][eval_name]
            print(
                f"[saebench] {name}: {eval_name} {r['seconds']:.1f}s"
                + (f" ERROR {r['error']}" if r["error"] else ""),
                flush=True,
            )
            # after every eval: a run stopped later keeps it
            write_atomically(
                cfg.out / PER_SAE / f"{name}.json", json.dumps(entry, indent=1).encode()
            )
        results["saes"][name] = entry
    timings["total_s"] = time.perf_counter() - start
    # SAEs evaluated into this folder by other runs (another process on the other core, or an
    # earlier run on other SAEs) join the report
    for other in sorted((cfg.out / PER_SAE).glob("*.json")):
        results["saes"].setdefault(other.stem, json.loads(other.read_text()))
    write_outputs(results, cfg.out)
    print(f"[saebench] wrote {cfg.out}/results.json, results.md, plot.png")
    return results


def _weights_digest(folder: Path) -> str | None:
    weights = Path(folder) / "sae_weights.safetensors"
    if not weights.exists():
        return None
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def _earlier_result(cfg: SaebenchConfig, name: str, path: Path) -> dict[str, Any] | None:
    """This SAE's results from an earlier run into ``cfg.out``, if they are of the same weights
    (a retrained SAE is evaluated again from scratch); its finished evals are kept. Results of
    an SAE whose decoder rows are not unit norm, from before the runner folded them
    (``evals.unit_norm_decoder``), are not the same measurement and are redone."""
    saved = cfg.out / PER_SAE / f"{name}.json"
    if not saved.exists():
        return None
    entry = json.loads(saved.read_text())
    if entry.get("weights_sha256") != _weights_digest(path):
        return None
    if not entry.get("decoder_norms_folded") and not _unit_norm_rows_on_disk(path):
        return None
    return entry


def _unit_norm_rows_on_disk(folder: Path) -> bool:
    from safetensors import safe_open

    from softsae_lens.experiments.saebench.evals import has_unit_norm_rows

    weights_file = Path(folder) / "sae_weights.safetensors"
    if not weights_file.exists():  # nothing to compare: the digest check decides
        return True
    with safe_open(str(weights_file), framework="pt") as weights:
        return has_unit_norm_rows(weights.get_tensor("W_dec"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
