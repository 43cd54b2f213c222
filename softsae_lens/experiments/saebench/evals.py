"""One function per SAEBench eval, each on a local model and local data (SAEBench environment).

Where SAEBench's own ``run_eval`` loads a model or a dataset by name from the hub, the function
here calls the step below it with the local object instead (no patching):

* core: ``sae_bench.evals.core.main.run_evals(sae, activation_store, model, ...)`` with an
  ``ActivationsStore`` over a local ``datasets.Dataset`` (its ``run_eval`` would load
  ``HookedTransformer.from_pretrained_no_processing(model_name)`` and the dataset by name);
* sparse_probing_sae_probes: sae-probes' ``ensure_dataset_activations(model=local_model)`` fills
  its activation cache first, so ``run_sae_evals`` (which loads the model by name only when the
  cache misses) finds everything on disk; datasets are the wheel's own csv.zst files;
* absorption: ``run_k_sparse_probing_experiment`` and ``run_feature_absortion_experiment`` with the
  local model (its ``run_eval`` loads the model by name), artifacts under our output folder;
* meta_structure: ``run_eval_single_sae`` (decoder rows only; never touches a model);
* mdl: ``run_eval_single_sae(..., model=local_model, dataset_name=local_dataset)`` (its
  ``run_eval`` loads the model by name; ``ActivationsStore.from_sae`` takes a Dataset object).
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from softsae_lens.experiments.saebench.config import SaebenchConfig

__all__ = [
    "EVAL_FUNCTIONS",
    "ForwardToHookLayer",
    "has_unit_norm_rows",
    "prepare_sae",
    "unit_norm_decoder",
]


def prepare_sae(name: str, sae: Any, model_name: str, cfg: SaebenchConfig) -> Any:
    """SAEBench's own cfg standardisation (hook layer, context size, ...) on a loaded SAE."""
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

    meta = sae.cfg.metadata
    meta.model_name = meta.model_name or model_name
    meta.context_size = cfg.context_size
    if meta.prepend_bos is None:
        meta.prepend_bos = True
    # folded first, so that SAEBench's own decoder-norm check sees the rows it will evaluate
    _, sae, _ = load_and_format_sae(name, unit_norm_decoder(name, sae), cfg.device)
    return sae.to(cfg.device)


def has_unit_norm_rows(W_dec: torch.Tensor) -> bool:
    """Whether every decoder row has norm 1 (to 1e-4): what SAEBench's metrics assume."""
    norms = W_dec.detach().norm(dim=-1)
    return torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@torch.no_grad()
def unit_norm_decoder(name: str, sae: Any) -> Any:
    """``sae`` with unit-norm decoder rows, folded in place by SAELens's own ``fold_W_dec_norm``.

    SAEBench folds the decoder norms of the SAEs it loads by id but only warns for SAE objects,
    and absorption scores a latent by ``activation * cos(probe, W_dec row)``, which assumes unit
    rows: a JumpReLU SAE trained by SAELens keeps rows of norm ~0.4-8, and its absorption read
    ~0.02 because its latents' probe projections were understated by that factor. The fold keeps
    the SAE's function (SAELens scales JumpReLU's threshold with it and refuses where it would
    not, as for TopK without ``rescale_acts_by_decoder_norm``: that SAE is left as it is).
    """
    if has_unit_norm_rows(sae.W_dec):
        return sae
    norms = sae.W_dec.norm(dim=-1)
    try:
        sae.fold_W_dec_norm()
    except NotImplementedError as err:
        print(f"[saebench] {name}: decoder rows are not unit norm and cannot be folded ({err})")
        return sae
    print(
        f"[saebench] {name}: folded decoder norms (median {norms.median().item():.3g}, "
        f"{norms.min().item():.3g}-{norms.max().item():.3g}) into the encoder"
    )
    return sae


def _store(sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig) -> Any:
    from sae_lens.training.activations_store import ActivationsStore

    return ActivationsStore.from_sae(
        model,
        sae,
        dataset=dataset,
        context_size=cfg.context_size,
        streaming=False,
        store_batch_size_prompts=cfg.batch_prompts,
        n_batches_in_buffer=2,
        train_batch_size_tokens=cfg.batch_prompts * cfg.context_size,
        device=cfg.device,
    )


def run_core(name: str, sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig, work: Path):
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals

    eval_cfg = CoreEvalConfig(
        model_name=sae.cfg.metadata.model_name,
        batch_size_prompts=cfg.batch_prompts,
        n_eval_reconstruction_batches=cfg.core_reconstruction_batches,
        n_eval_sparsity_variance_batches=cfg.core_variance_batches,
        context_size=cfg.context_size,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=False,
        compute_featurewise_weight_based_metrics=False,
    )
    torch.manual_seed(cfg.seed)
    metrics, _ = run_evals(sae, _store(sae, model, dataset, cfg), model, eval_cfg)
    flat = {f"{group}/{k}": v for group, d in metrics.items() for k, v in d.items()}
    return {k: v for k, v in flat.items() if isinstance(v, int | float)}


def run_sparse_probing(
    name: str, sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig, work: Path
):
    from sae_probes import run_sae_evals
    from sae_probes.generate_model_activations import ensure_dataset_activations

    hook = sae.cfg.metadata.hook_name
    model_name = "local_" + str(sae.cfg.metadata.model_name).replace("/", "_")
    cache = work / "sae_probes_model_cache"
    cache.mkdir(parents=True, exist_ok=True)
    # the model by argument: sae-probes would otherwise load it by name on a cache miss; a run
    # on the other core waits for the activations instead of writing the same files
    with open(work / "sae_probes_model_cache.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_dataset_activations(
            model_name=model_name,
            dataset_short_names=list(cfg.probe_datasets),
            hook_names=[hook],
            model_cache_path=cache,
            device=cfg.device,
            max_seq_len=cfg.context_size,
            batch_size=16,
            model=model,
        )
    results = work / "sae_probes_results" / name
    run_sae_evals(
        sae=sae,
        model_name=model_name,
        hook_name=hook,
        reg_type="l1",
        setting="normal",
        ks=list(cfg.probe_ks),
        results_path=results,
        model_cache_path=cache,
        datasets=list(cfg.probe_datasets),
        device=cfg.device,
        seed=cfg.seed,
    )
    out: dict[str, Any] = {}
    per_k: dict[int, list[float]] = {k: [] for k in cfg.probe_ks}
    for path in sorted((results / f"sae_probes_{model_name}" / "normal_setting").glob("*.json")):
        dataset_name = path.stem.split(f"_{hook}")[0]
        for entry in json.loads(path.read_text()):
            k = int(entry["k"])
            if k in per_k:
                per_k[k].append(float(entry["test_acc"]))
                out[f"{dataset_name}/top_{k}_test_accuracy"] = float(entry["test_acc"])
    for k, accs in per_k.items():
        if accs:
            out[f"mean/top_{k}_test_accuracy"] = sum(accs) / len(accs)
    return out


class ForwardToHookLayer:
    """``model`` whose ``run_with_cache`` stops after block ``layer`` unless told otherwise;
    every other attribute is the model's own.

    SAEBench's absorption reads only the cache of ``blocks.{layer}.hook_resid_post`` from its
    ``run_with_cache`` calls (``probing.gen_and_save_df_acts_probing`` and
    ``FeatureAbsorptionCalculator``), never the logits, yet passes no ``stop_at_layer``: every
    later block and the unembedding run for nothing (25 of SmolLM2's 30 blocks at layer 5, and a
    49,152-token unembedding). Handing SAEBench this object instead of the model is an argument,
    not a patch: the activations it reads are the same (``tests/test_saebench.py``).

    ``model_name`` replaces ``cfg.model_name`` in a copy of the model's config: SAEBench files its
    first-letter probe under ``probes_dir / cfg.model_name``, and a model booted from a local
    folder is named by that folder's absolute path, which would put the probe there (next to
    the model's weights) instead of under ``probes_dir``.
    """

    def __init__(self, model: Any, layer: int, model_name: str | None = None) -> None:
        self._model = model
        self._stop_at_layer = layer + 1
        if model_name is not None:
            self.cfg = copy.copy(model.cfg)
            self.cfg.model_name = model_name

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("stop_at_layer", self._stop_at_layer)
        return self._model.run_with_cache(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def run_absorption(name: str, sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig, work: Path):
    from sae_bench.evals.absorption.common import load_or_train_probe
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.feature_absorption import run_feature_absortion_experiment
    from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment

    ec = AbsorptionEvalConfig(model_name=str(sae.cfg.metadata.model_name))
    root = work / "absorption"
    layer = sae.cfg.metadata.hook_layer
    # a plain name, so the probe lands under probes_dir (SAEBench joins it to the path)
    probe_name = Path(str(sae.cfg.metadata.model_name)).name or "model"
    common = {
        "model": ForwardToHookLayer(model, layer, model_name=probe_name),
        "sae": sae,
        "layer": layer,
        "sae_name": name,
        "max_k_value": ec.max_k_value,
        "prompt_template": ec.prompt_template,
        "prompt_token_pos": ec.prompt_token_pos,
        "device": cfg.device,
        "probes_dir": root / "probes",
        "force": True,
    }
    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(True)  # the probes train
    try:
        # the ground-truth first-letter probe is trained once per model and layer (tens of
        # minutes on SmolLM2); a run on the other core waits for it instead of training it too
        root.mkdir(parents=True, exist_ok=True)
        with open(root / "first_letter_probe.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            load_or_train_probe(
                common["model"],
                base_template=ec.prompt_template,
                pos_idx=ec.prompt_token_pos,
                layer=layer,
                probes_dir=common["probes_dir"],
                device=cfg.device,
            )
        probing = run_k_sparse_probing_experiment(
            experiment_dir=root / "k_sparse_probing",
            f1_jump_threshold=ec.f1_jump_threshold,
            k_sparse_probe_l1_decay=ec.k_sparse_probe_l1_decay,
            k_sparse_probe_batch_size=ec.k_sparse_probe_batch_size,
            k_sparse_probe_num_epochs=ec.k_sparse_probe_num_epochs,
            eval_batch_size=ec.eval_k_sparse_probe_batch_size,
            verbose=False,
            **common,
        )
        good = probing[probing["f1_probe"] > ec.min_GT_probe_f1]
        out: dict[str, Any] = {
            "letters_with_probe_f1_over_min": len(good),
            "mean_probe_f1": float(probing["f1_probe"].mean()),
        }
        if len(good) < ec.min_feats_for_eval:
            out["skipped"] = (
                f"only {len(good)} first-letter probes above F1 {ec.min_GT_probe_f1} "
                f"(SAEBench needs {ec.min_feats_for_eval})"
            )
            return out
        raw = run_feature_absortion_experiment(
            experiment_dir=root / "feature_absorption",
            sparse_probing_experiment_dir=root / "k_sparse_probing",
            feature_split_f1_jump_threshold=ec.f1_jump_threshold,
            batch_size=ec.llm_batch_size,
            **common,
        )
    finally:
        torch.set_grad_enabled(grad_was)
    fractions, full_rates, splits = [], [], []
    letters = set(good["letter"])
    for letter, rows in raw.groupby("letter"):
        if letter not in letters:
            continue
        tp = float(rows["num_probe_true_positives"].mean())
        if tp <= 0:
            continue
        fractions.append(float(rows["absorption_fraction"].sum()) / tp)
        full_rates.append(float(rows["is_full_absorption"].sum()) / tp)
        splits.append(len(rows["split_feats"].iloc[0]))
    out.update(
        {
            "mean_absorption_fraction_score": statistics.mean(fractions) if fractions else None,
            "mean_full_absorption_score": statistics.mean(full_rates) if full_rates else None,
            "mean_num_split_features": statistics.mean(splits) if splits else None,
        }
    )
    return out


def run_meta_structure(
    name: str, sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig, work: Path
):
    from sae_bench.evals.meta_structure.eval_config import MetaStructureEvalConfig
    from sae_bench.evals.meta_structure.main import run_eval_single_sae

    ec = MetaStructureEvalConfig(
        random_seed=cfg.seed,
        train_steps=cfg.meta_train_steps,
        train_batch_size=min(1024, sae.cfg.d_sae),
        k=min(4, sae.cfg.d_sae),
        dtype="float32",
    )
    result = run_eval_single_sae(name, "local", sae, ec, cfg.device)
    m = result.eval_result_metrics.meta_structure
    return {
        "decoder_fraction_variance_explained": m.decoder_fraction_variance_explained,
        "final_reconstruction_mse": m.final_reconstruction_mse,
    }


def run_mdl(name: str, sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig, work: Path):
    from sae_bench.evals.mdl.eval_config import MDLEvalConfig
    from sae_bench.evals.mdl.main import run_eval_single_sae

    grad_was = torch.is_grad_enabled()  # mdl's run_eval_single_sae turns gradients off globally
    ec = MDLEvalConfig(
        k_values=list(cfg.mdl_k_values),
        num_bins_values=list(cfg.mdl_num_bins),
        random_seed=cfg.seed,
        context_length=cfg.context_size,
        sae_batch_size=cfg.batch_prompts,
        model_name=str(sae.cfg.metadata.model_name),
    )
    try:
        results = run_eval_single_sae(ec, sae, model, cfg.device, dataset_name=dataset)
    finally:
        torch.set_grad_enabled(grad_was)
    out: dict[str, Any] = {}
    for r in results:
        key = f"bins_{r['num_bins']}_k_{r['k']}"
        out[f"{key}/description_length"] = float(r["description_length"])
        out[f"{key}/mse_loss"] = float(r["mse_loss"])
        out[f"{key}/within_threshold"] = bool(r["within_threshold"])
    return out


EVAL_FUNCTIONS = {
    "core": run_core,
    "sparse_probing_sae_probes": run_sparse_probing,
    "absorption": run_absorption,
    "meta_structure": run_meta_structure,
    "mdl": run_mdl,
}


def run_one(
    eval_name: str, name: str, sae: Any, model: Any, dataset: Any, cfg: SaebenchConfig, work: Path
) -> dict[str, Any]:
    """One eval on one SAE: its metrics, its wall time, or the error it raised."""
    start = time.perf_counter()
    try:
        metrics = EVAL_FUNCTIONS[eval_name](name, sae, model, dataset, cfg, work)
        error = None
    except Exception as exc:  # report and go on: one broken eval must not hide the others
        metrics, error = {}, f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }
    return {"metrics": clean, "seconds": time.perf_counter() - start, "error": error}
