"""Look at a saved SoftSAE's per-token k on some text.

Usage::

    python -m softsae_lens.analyze --sae DIR --text "Some text" [--text "More"] \\
        [--text-file F] [--token-ids "1 2 3"] [--out out/analysis] [--top-latents 8] \\
        [--device cpu] [--model-path DIR_OR_GGUF | --model NAME | --model-factory MOD:FUNC] \\
        [--max-tokens 1024] [--include-special-tokens] [--k-override K | --k-scale S | --k-cap C]

Loads the SAE with ``sae_lens.SAE.load_from_disk`` (after ``import softsae_lens`` registered
"soft"), then the model, first of:

1. ``--model-path``: a local ``.gguf`` file or Hugging Face model folder, booted offline by
   :func:`softsae_lens.models.local.load_bridge`;
2. ``--model``: a local path as above, else a TransformerLens model name
   (``HookedSAETransformer.from_pretrained_no_processing``);
3. ``--model-factory module:function``: any Python function returning the model (called with
   ``device=``), for models neither of the above loads;
4. the model the SAE's metadata names (``model_name``, as SAELens's runner saved it): a local
   file or folder that still exists loads like ``--model-path`` (the runner records
   ``model_class_name="HookedTransformer"`` even for a bridge, so only the path is trusted);
   SmolLM2's name (or none) loads SmolLM2-135M-Instruct offline (:mod:`softsae_lens.models.smollm2`);
   any other name goes to TransformerLens, and when that fails SmolLM2 is used if its width
   matches the SAE's ``d_in``.

Special tokens (BOS, EOS, PAD, SEP) are left out of the splice and of every statistic, as in
``sae_lens.evals.run_evals``, unless ``--include-special-tokens``. Writes ``tokens.html``,
``tokens.png``, ``records.json``, ``corpus_stats.json`` and ``corpus_stats.png`` into ``--out`` and
prints a summary.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simple_parsing import field

from softsae_lens.flags import config_parser, parse_config
from softsae_lens.models.load import LOCAL_MODEL
from softsae_lens.models.local import local_model_path

DEFAULT_OUT = Path("out/analysis")


@dataclass
class AnalyzeConfig:
    """Per-token k_hat of a SoftSAE: an HTML view, PNGs and JSON records."""

    sae: Path
    """folder of a saved SoftSAE (save_inference_model)"""
    text: list[str] = field(default_factory=list, action="append", nargs=None, type=str)
    """a text to analyse (repeatable)"""
    text_file: list[Path] = field(default_factory=list, action="append", nargs=None, type=Path)
    """a UTF-8 file analysed as one text (repeatable)"""
    token_ids: list[str] = field(default_factory=list, action="append", nargs=None, type=str)
    """token ids separated by spaces or commas, analysed as one text (repeatable; for models
    without a tokenizer)"""
    out: Path = DEFAULT_OUT
    """output folder"""
    top_latents: int = 8
    """top latents kept per token"""
    device: str = "cpu"
    """torch device"""
    model_path: Path | None = None
    """a local model, offline: a .gguf file or a Hugging Face model folder (with config.json)
    (unset: the SAE's metadata model_name when that is one)"""
    model: str | None = None
    """a TransformerLens model name to load instead of the one in the SAE's metadata (a local
    path works as --model-path)"""
    model_factory: str | None = field(default=None, metavar="MODULE:FUNCTION")
    """build the model with this Python function, called with device=... (for models neither
    --model-path nor --model loads); the module must be importable"""
    max_tokens: int = 1024
    """tokens kept per text"""
    include_special_tokens: bool = False
    """splice the SAE at BOS/EOS/PAD/SEP too and count them in every statistic (unset: left
    alone and left out, as in SAELens's run_evals)"""
    k_override: float | None = None
    """also report the loss with every k set to this"""
    k_scale: float | None = None
    """also report the loss with k_hat scaled by this"""
    k_cap: float | None = None
    """also report the loss with k_hat capped at this"""
    png: bool = field(default=True, negative_prefix="--no-")
    """write the two PNGs"""

    def __post_init__(self) -> None:
        """A one-line ValueError naming the argument, its value and what is allowed."""
        self.sae, self.out = Path(self.sae), Path(self.out)
        self.text_file = [Path(p) for p in self.text_file]
        if self.model_path is not None:
            self.model_path = Path(self.model_path)
        _at_most_one(self, "model_path", "model", "model_factory")
        _at_most_one(self, "k_override", "k_scale", "k_cap")
        if not (self.text or self.text_file or self.token_ids):
            raise ValueError("give at least one of --text, --text-file or --token-ids")
        for path in self.text_file:
            if not path.is_file():
                raise ValueError(
                    f"--text-file {path}: no such file (a UTF-8 text file is expected)"
                )
        for text in self.text:
            if not text.strip():
                raise ValueError("--text '': empty; give text to analyse")
        if not (self.sae / "cfg.json").is_file():
            raise ValueError(
                f"--sae {self.sae}: no cfg.json there (expected a folder written by "
                "save_inference_model or the SAELens training runner)"
            )
        if self.model_path is not None and local_model_path(self.model_path) is None:
            problem = "does not exist" if not self.model_path.exists() else "is not a model"
            raise ValueError(f"--model-path {self.model_path} {problem}: expected {LOCAL_MODEL}")
        if self.model_factory is not None:
            module_name, _, func_name = self.model_factory.partition(":")
            if not module_name or not func_name:
                raise ValueError(
                    f"--model-factory {self.model_factory}: expected MODULE:FUNCTION, "
                    "e.g. mypackage.models:build"
                )
        if self.top_latents < 0:
            raise ValueError(f"--top-latents must be >= 0, got {self.top_latents}")
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {self.max_tokens}")


def _at_most_one(cfg: AnalyzeConfig, *names: str) -> None:
    given = [name for name in names if getattr(cfg, name) is not None]
    if len(given) > 1:
        flags = [f"--{name.replace('_', '-')}" for name in given]
        raise ValueError(f"argument {flags[1]}: not allowed with argument {flags[0]}")


def _parse_args(argv: Sequence[str] | None) -> AnalyzeConfig:
    parser = config_parser(AnalyzeConfig, "python -m softsae_lens.analyze")
    return parse_config(parser, argv, usage_on_error=True).cfg


def _from_factory(spec: str, device: str) -> Any:
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"--model-factory {spec}: cannot import {module_name!r} ({err}); the module must "
            "be on sys.path (PYTHONPATH)"
        ) from err
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ValueError(f"--model-factory {spec}: {module_name!r} has no function {func_name!r}")
    return factory(device=device)


def _check_width(model: Any, sae: Any, hook_name: str) -> None:
    """The SAE's d_in must be the width of the model's activations at its hook."""
    import torch

    d_in = sae.cfg.d_in
    width = getattr(getattr(model, "cfg", None), "d_model", None)
    try:
        _, cache = model.run_with_cache(
            torch.zeros(1, 2, dtype=torch.long), names_filter=[hook_name]
        )
        width = int(cache[hook_name].shape[-1])
    except Exception:  # the probe is only for the message; the analysis will say what fails
        pass
    if width is not None and width != d_in:
        raise ValueError(
            f"--sae: the SAE's d_in={d_in} does not match the model's width {width} at hook "
            f"{hook_name!r}; pass the model the SAE was trained on (--model-path / --model)"
        )


def _check_ids(ids: list[int], model: Any) -> None:
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    bad = [i for i in ids if i < 0 or (vocab is not None and i >= vocab)]
    if bad:
        raise ValueError(
            f"--token-ids: {bad[:5]} outside the model's vocabulary; ids must be in [0, {vocab})"
        )


def _parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError as err:
        raise SystemExit(
            f"--token-ids must be integers separated by spaces or commas: {err}"
        ) from err
    if not ids:
        raise SystemExit("--token-ids is empty")
    return ids


def main(argv: Sequence[str] | None = None, *, model: Any | None = None) -> dict[str, Any]:
    """Run the CLI. ``model`` (for tests and notebooks) skips model loading.

    Returns the corpus statistics written to ``corpus_stats.json`` plus ``"paths"``.
    """
    args = _parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sae_lens import SAE

    import softsae_lens  # noqa: F401  (registers "soft")
    from softsae_lens import analysis
    from softsae_lens.models import load_model
    from softsae_lens.models.bridge import special_token_ids
    from softsae_lens.models.local import resolve_hook_name

    sae = SAE.load_from_disk(str(args.sae), device=args.device)
    sae.eval()
    if model is None and args.model_factory:
        model = _from_factory(args.model_factory, args.device)
    if model is not None:
        model_name = (
            getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__
        )
    else:
        model, model_name = load_model(
            args.model, args.device, path=args.model_path, sae=sae, sae_path=args.sae
        )

    hook_name = sae.cfg.metadata.hook_name
    resolved = resolve_hook_name(model, hook_name)
    if resolved != hook_name:
        sae.cfg.metadata.hook_name = resolved

    _check_width(model, sae, resolved)
    texts: list[Any] = list(args.text)
    for path in args.text_file:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--text-file {path}: not a readable UTF-8 text file ({err})") from err
        if not text.strip():
            raise ValueError(f"--text-file {path}: empty; give a file with text to analyse")
        texts.append(text)
    for t in args.token_ids:
        ids = _parse_ids(t)
        _check_ids(ids, model)
        texts.append(torch.tensor(ids, dtype=torch.long))

    excluded_ids = [] if args.include_special_tokens else special_token_ids(model, True)
    records = analysis.token_k_report(
        model,
        sae,
        texts,
        top_n=args.top_latents,
        max_tokens=args.max_tokens,
        exclude_special_tokens=excluded_ids,
    )
    if not any(not r.excluded for r in records):
        given = (
            f"the {len(records)} token(s) given are all special tokens (ids {excluded_ids}), "
            "which are left out"
            if records
            else "the input holds no token"
        )
        raise ValueError(
            f"no token to analyse: {given}; give more text, or pass --include-special-tokens"
        )
    meta: dict[str, Any] = {
        "model": model_name,
        "sae_path": str(args.sae),
        "hook_name_resolved": resolved,
        "special_token_ids_excluded": excluded_ids,
    }
    sae_info = analysis.sae_info(sae)
    sae_info["hook_name"] = hook_name
    meta["sae"] = sae_info

    override_summary = None
    override = {"k": args.k_override, "scale": args.k_scale, "cap": args.k_cap}
    if any(v is not None for v in override.values()):
        result = analysis.loss_with_k_override(
            model,
            sae,
            texts,
            max_tokens=args.max_tokens,
            exclude_special_tokens=excluded_ids,
            **{k: v for k, v in override.items() if v is not None},
        )
        override_summary = result.summary()
        meta["k_override"] = override_summary

    paths = analysis.write_analysis(
        records, args.out, meta=meta, title="SoftSAE: latents per token", png=args.png
    )
    stats = json.loads(paths["corpus_stats"].read_text(encoding="utf-8"))

    spearman = stats["spearman_k_hat_vs_loss"]
    rho = "n/a" if spearman["rho"] is None else f"{spearman['rho']:+.3f}"
    print(
        f"{stats['n_tokens']} tokens in {stats['n_texts']} text(s), {model_name}, hook {resolved}"
    )
    print(
        f"mean k_hat {stats['k_hat_mean']:.2f} (SAE k={sae_info['k']}, k_max={sae_info['k_max']}), "
        f"mean L0 {stats['l0_mean']:.2f}"
    )
    print(f"Spearman(k_hat, next-token loss) = {rho} over {spearman['n']} tokens (positions > 0)")
    if stats["n_excluded"]:
        noun = "token" if stats["n_excluded"] == 1 else "tokens"
        print(
            f"{stats['n_excluded']} special {noun} (ids {excluded_ids}) left out of the splice "
            "and of every statistic; --include-special-tokens counts them"
        )
    by_class = stats["k_hat_by_class"]
    print(
        "mean k_hat by class: "
        + ", ".join(
            f"{c} {v['mean']:.2f} (n={v['count']})" for c, v in by_class.items() if c != "all"
        )
    )
    if override_summary is not None:
        print(
            f"loss clean {override_summary['loss_clean']:.4f}, SAE spliced "
            f"{override_summary['loss_spliced']:.4f}, with {override_summary['override']} "
            f"{override_summary['loss_override']:.4f} (L0 {override_summary['l0_override_mean']:.2f})"
        )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    stats["paths"] = {k: str(v) for k, v in paths.items()}
    return stats


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    try:
        main()
    except (RuntimeError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
