"""The settings of one dashboards run: :class:`DashboardsConfig`, the CLI's flags and their help.

Each field's docstring is its ``--help`` text (simple_parsing reads it). :meth:`validate`
raises a one-line ValueError naming the argument, its value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from softsae_lens.data.corpus.sources import SOURCES

__all__ = ["TOP_BY", "DashboardsConfig", "parse_latents"]

TOP_BY = ("frequency", "max", "index", "random")


def parse_latents(text: str) -> int | list[int]:
    """``"32"`` -> 32 (a number of latents); ``"3,17,42"`` -> [3, 17, 42] (those latents).

    Raises:
        ValueError: naming the value and the two allowed forms.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or (len(values) == 1 and values[0] == 0):
        raise ValueError(
            f"--latents {text!r}: expected a number of latents N >= 1 (chosen by --top-by) or "
            "a comma-separated list of latent indices such as 3,17,42"
        )
    if len(values) == 1 and "," not in str(text):
        return values[0]
    return sorted(set(values))


@dataclass
class DashboardsConfig:
    """Per-latent dashboards of a saved SAE: HTML pages and a Neuronpedia export."""

    sae: Path | None = None
    """folder of a saved SAE of any architecture (cfg.json + weights, SAE.load_from_disk)"""
    model_path: Path | None = None
    """a local model, offline: a .gguf file or a Hugging Face model folder (default: the
    model the SAE's metadata names, else SmolLM2-135M-Instruct offline)"""
    model: str | None = None
    """a TransformerLens model name instead of the SAE's metadata model_name"""
    text: list[str] = field(default_factory=list)
    """texts to stream through the model (each one or more rows of --context-size tokens)"""
    text_file: list[Path] = field(default_factory=list)
    """UTF-8 files, each streamed as one text"""
    corpus: str | None = None
    """held-out documents of the local corpus, comma-separated sources from
    fortunes,python-doc,pydoc,stdlib-doc,stdlib-src (the same split the demo holds out)"""
    max_tokens: int = 100_000
    """stop after this many token positions"""
    context_size: int = 128
    """tokens per row (BOS included)"""
    batch_rows: int = 8
    """rows per model forward"""
    latents: str = "32"
    """N (that many latents, picked by --top-by) or a list such as 3,17,42"""
    top_by: str = "frequency"
    """how N latents are picked: frequency (most often firing), max (largest activation),
    index (0..N-1), random (seeded, among latents that fire)"""
    out: Path = Path("out/dashboards")
    """output folder: index.html, latents/<i>.html, dashboards.json, neuronpedia/"""
    n_top: int = 20
    """top activating contexts shown per latent"""
    n_intervals: int = 5
    """activation intervals (equal width from 0 to the max) sampled below the top"""
    per_interval: int = 5
    """contexts shown per interval"""
    n_random: int = 60
    """random firing positions kept per latent during the stream (the interval samples)"""
    before: int = 12
    """tokens shown before the activating token"""
    after: int = 4
    """tokens shown after the activating token"""
    n_logits: int = 10
    """top and bottom tokens of the logit effect"""
    dense_threshold: float = 0.1
    """a latent firing on more than this fraction of tokens is listed as dense"""
    include_special_tokens: bool = False
    """count BOS/EOS/PAD/SEP positions too (default: left out, as SAELens's run_evals)"""
    neuronpedia: bool = True
    """also write the Neuronpedia upload JSON (neuronpedia/batch-*.json)"""
    np_model_id: str | None = None
    """Neuronpedia model id (default: the model's name, lower case)"""
    np_sae_set: str | None = None
    """Neuronpedia SAE set name (default: the SAE folder's name)"""
    device: str = "cpu"
    """torch device"""
    seed: int = 0
    """seed of the random samples and of --top-by random"""

    def validate(self) -> None:
        """Raise a one-line ValueError for the first bad argument."""

        def bad(name: str, value: object, allowed: str) -> None:
            raise ValueError(f"--{name} {value}: {allowed}")

        if self.sae is None:
            bad("sae", None, "required: the folder of a saved SAE (with cfg.json)")
        elif not (Path(self.sae) / "cfg.json").is_file():
            bad("sae", self.sae, "expected a folder with cfg.json (SAE.save_model)")
        if self.model is not None and self.model_path is not None:
            bad("model-path", self.model_path, "give --model or --model-path, not both")
        if self.model_path is not None:
            from softsae_lens.models.local import local_model_path

            if local_model_path(self.model_path) is None:
                bad("model-path", self.model_path, "expected a .gguf file or a model folder")
        if not (self.text or self.text_file or self.corpus):
            raise ValueError(
                "--text/--text-file/--corpus: give at least one (texts, files or corpus sources)"
            )
        for path in self.text_file:
            if not Path(path).is_file():
                bad("text-file", path, "no such file")
        if self.corpus is not None:
            names = [s.strip() for s in self.corpus.split(",") if s.strip()]
            if not names or any(n not in SOURCES for n in names):
                bad("corpus", self.corpus, f"comma-separated names from {','.join(SOURCES)}")
        parse_latents(self.latents)
        if self.top_by not in TOP_BY:
            bad("top-by", self.top_by, f"one of {', '.join(TOP_BY)}")
        for name in ("max_tokens", "context_size", "batch_rows", "n_top", "per_interval"):
            if getattr(self, name) < 1:
                bad(name.replace("_", "-"), getattr(self, name), "must be >= 1")
        if self.context_size < 2:
            bad("context-size", self.context_size, "must be >= 2")
        for name in ("n_intervals", "n_random", "before", "after", "n_logits"):
            if getattr(self, name) < 0:
                bad(name.replace("_", "-"), getattr(self, name), "must be >= 0")
        if not 0 < self.dense_threshold <= 1:
            bad("dense-threshold", self.dense_threshold, "a fraction in (0, 1]")
