"""SoftSAE vs TopK on sentence embeddings: a model of another kind, through the arrays-on-disk path.

The paper's second domain is pooled CLIP image embeddings; this is the same setting with a
model that runs offline here: all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled and
L2-normalised, :mod:`softsae_lens.minilm`) of real English text nobody in this project wrote:
sentences of Python's own documentation (``pydoc_data.topics``, the language reference behind
``help("if")``, and ``pydoc.render_doc`` of a fixed list of standard-library modules).

Steps: split the documents into sentences (prose only: 4 to 60 words, ending like a sentence,
mostly letters; each sentence once); embed them once into ``OUT/embeddings.npy``; train a
SoftSAE and a TopK SAE at the same ``k`` with the same steps, batches, learning rate and seed
through :func:`softsae_lens.train_activations.train_on_activations` (SAELens's ``SAETrainer``
over the ``.npy``, memory-mapped); score both on the same held-out sentences; then ask which
sentences SoftSAE gives the most and the fewest latents: Spearman correlations of ``k_hat``
with length (tokens), vocabulary (mean rarity of the words: ``-log10`` of their frequency in
this corpus) and code-likeness (share of words with ``_``, ``()``, dots or digits), mean
``k_hat`` per source, and the sentences at both ends.

Run::

    python -m softsae_lens.experiments.minilm_embeddings       # all ~5,900 sentences, d_sae 1536, k 16
    python -m softsae_lens.experiments.minilm_embeddings --max-sentences 2000 --passes 5   # a quick look

Outputs in ``--out`` (default ``out/minilm``): ``sentences.jsonl``, ``embeddings.npy``, the two
saved SAEs (``soft/``, ``topk/``), ``results.json``, ``results.md`` and ``k_hat.png``. Image
embeddings (CLIP: 512-d, the paper's d_sae 4096 and k 220) go through the same
``train_activations`` path from a ``.npy``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Modules whose pydoc pages are mostly prose; importing them has no side effects.
MODULES = [
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "doctest",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "gc",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "lzma",
    "math",
    "mmap",
    "multiprocessing",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "platform",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shlex",
    "shutil",
    "signal",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "tomllib",
    "traceback",
    "types",
    "typing",
    "unicodedata",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
]
REFERENCE = "language reference"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
# pydoc's section titles (NAME, DESCRIPTION, MODULE REFERENCE, ...) end a paragraph.
_HEADING = re.compile(r"^[A-Z][A-Z ]+$")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.()]*")
_CODE_WORD = re.compile(r"_|\(\)|\w\.\w|\d")


@dataclass
class Sentence:
    text: str
    source: str  # a pydoc topic's or a module's name
    category: str  # REFERENCE or "library: <module>"


def _paragraphs(text: str) -> list[str]:
    lines = [re.sub(r"^[\s|]+", "", line).rstrip() for line in text.splitlines()]
    out, current = [], []
    for line in lines:
        if line and not _HEADING.match(line):
            current.append(line)
        elif current:
            out.append(" ".join(current))
            current = []
    if current:
        out.append(" ".join(current))
    return out


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    letters = sum(c.isalpha() for c in sentence)
    return (
        4 <= len(words) <= 60
        and sentence[-1] in ".!?"
        and letters >= 0.6 * len(sentence)
        and not sentence.startswith((">>>", "..."))
        and sentence[0].isupper()
    )


def documents() -> list[tuple[str, str, str]]:
    """``(source, category, text)`` for every pydoc topic and every module in :data:`MODULES`."""
    import importlib
    import pydoc
    from pydoc_data.topics import topics

    docs = [(name, REFERENCE, text) for name, text in sorted(topics.items())]
    for name in MODULES:
        module = importlib.import_module(name)
        docs.append((name, "library", pydoc.render_doc(module, renderer=pydoc.plaintext)))
    return docs


def split_sentences(docs: Sequence[tuple[str, str, str]]) -> list[Sentence]:
    """Prose sentences of ``docs``, each text once (first occurrence), in document order."""
    seen: set[str] = set()
    out = []
    for source, category, text in docs:
        for paragraph in _paragraphs(text):
            for sentence in _SENTENCE_END.split(paragraph):
                # Object addresses (pydoc prints default values) change from run to run.
                sentence = _ADDRESS.sub("", re.sub(r"\s+", " ", sentence)).strip()
                if _is_prose(sentence) and sentence not in seen:
                    seen.add(sentence)
                    out.append(Sentence(sentence, source, category))
    return out


def vocabulary_features(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per text: word count, mean word rarity (-log10 corpus frequency), share of code-like words."""
    words = [[w.lower() for w in _WORD.findall(t)] for t in texts]
    counts = Counter(w for ws in words for w in ws)
    total = sum(counts.values())
    rarity = np.array(
        [np.mean([-math.log10(counts[w] / total) for w in ws]) if ws else 0.0 for ws in words]
    )
    code = np.array(
        [np.mean([bool(_CODE_WORD.search(w)) for w in ws]) if ws else 0.0 for ws in words]
    )
    return {"n_words": np.array([len(ws) for ws in words]), "rarity": rarity, "code_share": code}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class Settings:
    """One run of the experiment (the CLI flags)."""

    out: Path = Path("out/minilm")
    max_sentences: int | None = None
    d_sae: int = 1536
    k: int = 16
    batch_size: int = 256
    passes: float = 30.0
    lr: float = 1e-3
    eval_fraction: float = 0.2
    seed: int = 0
    embed_batch_size: int = 64
    progress: bool = True


def prepare(settings: Settings) -> tuple[list[Sentence], Path, np.ndarray]:
    """Sentences (``OUT/sentences.jsonl``) and their embeddings (``OUT/embeddings.npy``),
    reused when the file for the same sentences is already there; also the token counts."""
    from softsae_lens.minilm import embed_sentences, load_minilm

    sentences = split_sentences(documents())
    if settings.max_sentences is not None and len(sentences) > settings.max_sentences:
        keep = np.sort(
            np.random.default_rng(settings.seed).permutation(len(sentences))[
                : settings.max_sentences
            ]
        )
        sentences = [sentences[i] for i in keep]
    settings.out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256("\n".join(s.text for s in sentences).encode()).hexdigest()[:16]
    emb_path, tok_path = settings.out / "embeddings.npy", settings.out / "n_tokens.npy"
    stamp = settings.out / "embeddings.sha256"
    if not (emb_path.exists() and stamp.exists() and stamp.read_text() == digest):
        model, tokenizer = load_minilm()
        emb, n_tokens = embed_sentences(
            [s.text for s in sentences],
            model,
            tokenizer,
            batch_size=settings.embed_batch_size,
            progress=settings.progress,
        )
        np.save(emb_path, emb)
        np.save(tok_path, n_tokens)
        stamp.write_text(digest)
        with (settings.out / "sentences.jsonl").open("w") as f:
            for s in sentences:
                f.write(json.dumps(s.__dict__) + "\n")
    return sentences, emb_path, np.load(tok_path)


def train_both(settings: Settings, emb_path: Path, n_rows: int) -> dict[str, Any]:
    """SoftSAE and TopK at the same k, same data, steps, learning rate and seed."""
    from sae_lens import TopKTrainingSAEConfig

    from softsae_lens import SoftTrainingSAEConfig
    from softsae_lens.activations import open_activations, split_rows
    from softsae_lens.heldout import evaluate_on_rows
    from softsae_lens.minilm import D_MODEL
    from softsae_lens.train_activations import ActivationsRunnerConfig, train_on_activations

    n_train = n_rows - round(settings.eval_fraction * n_rows)
    steps = max(1, round(settings.passes * n_train / settings.batch_size))
    configs = {
        "soft": SoftTrainingSAEConfig(d_in=D_MODEL, d_sae=settings.d_sae, k=settings.k),
        "topk": TopKTrainingSAEConfig(d_in=D_MODEL, d_sae=settings.d_sae, k=settings.k),
    }
    rows = open_activations(emb_path)
    _, held = split_rows(n_rows, settings.eval_fraction, None, settings.seed)
    out: dict[str, Any] = {"steps": steps, "held_out": held}
    for name, sae_cfg in configs.items():
        sae_cfg.normalize_activations = "expected_average_only_in"
        start = time.perf_counter()
        run = train_on_activations(
            ActivationsRunnerConfig(
                sae=sae_cfg,
                activations=str(emb_path),
                eval_fraction=settings.eval_fraction,
                max_eval_rows=None,
                train_batch_size=settings.batch_size,
                training_samples=steps * settings.batch_size,
                lr=settings.lr,
                output_path=str(settings.out / name),
                seed=settings.seed,
                model_name="sentence-transformers/all-MiniLM-L6-v2",
                hook_name="mean_pooled_normalized",
            ),
            progress=settings.progress,
        )
        per_row = evaluate_on_rows(run.sae, rows, held, per_row=True)["rows"]
        out[name] = {
            "metrics": run.metrics,
            "rows": per_row,
            "seconds": time.perf_counter() - start,
        }
    return out


def analyse(
    sentences: list[Sentence], n_tokens: np.ndarray, runs: dict[str, Any]
) -> dict[str, Any]:
    """Which held-out sentences SoftSAE gives the most and the fewest latents, and why."""
    held = runs["held_out"]
    texts = [sentences[i].text for i in held]
    feats = vocabulary_features([s.text for s in sentences])
    soft, topk = runs["soft"]["rows"], runs["topk"]["rows"]
    k_hat = soft["k_hat"]
    per = {
        "tokens": n_tokens[held],
        "rarity": feats["rarity"][held],
        "code_share": feats["code_share"][held],
        "soft_rel_err": soft["sq_err"] / soft["norm_sq"],
        "topk_rel_err": topk["sq_err"] / topk["norm_sq"],
    }
    correlations = {name: spearman(k_hat, values) for name, values in per.items()}
    correlations["soft_l0"] = spearman(k_hat, soft["l0"])
    sources = np.array([sentences[i].source for i in held])
    categories = np.array([sentences[i].category for i in held])
    by_category = {
        c: {"n": int((categories == c).sum()), "k_hat_mean": float(k_hat[categories == c].mean())}
        for c in np.unique(categories)
    }
    by_source = {
        s: {"n": int((sources == s).sum()), "k_hat_mean": float(k_hat[sources == s].mean())}
        for s in np.unique(sources)
        if (sources == s).sum() >= 15
    }
    order = np.argsort(k_hat)

    def pick(i: int) -> dict[str, Any]:
        return {
            "k_hat": float(k_hat[i]),
            "tokens": int(per["tokens"][i]),
            "rarity": round(float(per["rarity"][i]), 2),
            "source": str(sources[i]),
            "text": texts[i],
        }

    return {
        "per_sentence": {"k_hat": k_hat, **per},
        "categories": categories,
        "spearman_k_hat": correlations,
        "by_category": by_category,
        "by_source": dict(sorted(by_source.items(), key=lambda kv: kv[1]["k_hat_mean"])),
        "fewest": [pick(i) for i in order[:8]],
        "most": [pick(i) for i in order[::-1][:8]],
    }


def _row(name: str, m: dict[str, Any], seconds: float) -> str:
    k_hat = m.get("k_hat")
    k_text = (
        f"{k_hat['mean']:.1f} ({k_hat['q05']:.1f} / {k_hat['q50']:.1f} / {k_hat['q95']:.1f})"
        if k_hat
        else "-"
    )
    return (
        f"| {name} | {m['explained_variance']:.3f} | {m['mse']:.4f} | {m['l0']:.1f} | "
        f"{m['l0_dist']['std']:.1f} | {k_text} | {m['dead_latents']} / {m['d_sae']} | {seconds:.0f} |"
    )


def markdown_report(result: dict[str, Any]) -> str:
    s, runs, a = result["settings"], result["runs"], result["analysis"]
    lines = [
        "# SoftSAE vs TopK on all-MiniLM-L6-v2 sentence embeddings",
        "",
        f"{result['n_sentences']} sentences of Python's documentation ({result['n_held_out']} held out), "
        f"384-d mean-pooled, L2-normalised embeddings; d_sae {s['d_sae']}, k {s['k']}, "
        f"{runs['steps']} steps of {s['batch_size']}, lr {s['lr']}, seed {s['seed']}.",
        "",
        "| SAE | EV | MSE | mean L0 | L0 std | k_hat mean (5% / 50% / 95%) | dead | train s |",
        "|---|---|---|---|---|---|---|---|",
        _row("SoftSAE", runs["soft"]["metrics"], runs["soft"]["seconds"]),
        _row("TopK", runs["topk"]["metrics"], runs["topk"]["seconds"]),
        "",
        "Spearman correlation of SoftSAE's k_hat with, per held-out sentence:",
        "",
        "| " + " | ".join(a["spearman_k_hat"]) + " |",
        "|" + "---|" * len(a["spearman_k_hat"]),
        "| " + " | ".join(f"{v:+.2f}" for v in a["spearman_k_hat"].values()) + " |",
        "",
        "Mean k_hat by category: "
        + "; ".join(f"{c} {v['k_hat_mean']:.1f} (n={v['n']})" for c, v in a["by_category"].items()),
        "",
    ]
    by_source = list(a["by_source"].items())
    if by_source:
        ends = (
            by_source[:5] + [("...", None)] + by_source[-5:] if len(by_source) > 10 else by_source
        )
        lines.append(
            "Mean k_hat by source (sources with >= 15 held-out sentences, lowest to highest): "
            + ", ".join(name if v is None else f"{name} {v['k_hat_mean']:.1f}" for name, v in ends)
        )
        lines.append("")
    for title, key in (("Fewest latents", "fewest"), ("Most latents", "most")):
        lines += [
            f"{title}:",
            "",
            "| k_hat | tokens | rarity | source | sentence |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['k_hat']:.1f} | {p['tokens']} | {p['rarity']} | {p['source']} | {p['text'][:140]} |"
            for p in a[key]
        ]
        lines.append("")
    return "\n".join(lines)


def make_plot(result: dict[str, Any], path: Path) -> Path:
    """k_hat against sentence length and word rarity, its distribution, and by category."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a = result["analysis"]
    per = a["per_sentence"]
    k_hat, k = per["k_hat"], result["settings"]["k"]
    fig = Figure(figsize=(13, 9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    ax = axes[0, 0]
    ax.hist(k_hat, bins=40, color="tab:blue", alpha=0.8, label="SoftSAE k_hat")
    ax.axvline(k, color="tab:red", ls="--", label=f"TopK k = {k}")
    ax.set(
        xlabel="k_hat (predicted latents per sentence)",
        ylabel="held-out sentences",
        title="How many latents each sentence gets",
    )
    ax.legend()
    for ax, key, label in (
        (axes[0, 1], "tokens", "sentence length (MiniLM tokens)"),
        (axes[1, 0], "rarity", "mean word rarity (-log10 corpus frequency)"),
    ):
        x = per[key]
        ax.scatter(x, k_hat, s=4, alpha=0.25, color="tab:blue")
        edges = np.unique(np.quantile(x, np.linspace(0, 1, 11)))
        which = np.clip(np.digitize(x, edges[1:-1]), 0, len(edges) - 2)
        centers = [x[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        means = [k_hat[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        ax.plot(centers, means, "o-", color="black", label="decile means")
        rho = a["spearman_k_hat"][key]
        ax.set(xlabel=label, ylabel="k_hat", title=f"k_hat vs {key} (Spearman {rho:+.2f})")
        ax.legend()
    ax = axes[1, 1]
    by_source = list(a["by_source"].items())
    shown = by_source[:8] + by_source[-8:] if len(by_source) > 16 else by_source
    names = [n for n, _ in shown]
    values = [v["k_hat_mean"] for _, v in shown]
    colors = ["tab:orange" if n in _reference_sources(a) else "tab:green" for n in names]
    ax.barh(range(len(names)), values, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.axvline(float(k_hat.mean()), color="black", lw=0.8)
    if values:
        ax.set_xlim(min(values) - 0.5, max(values) + 0.5)
    ax.set(
        xlabel="mean k_hat (black line: all held-out sentences)",
        title="Lowest and highest sources (orange: language reference)",
    )
    fig.tight_layout()
    fig.savefig(path)
    return path


def _reference_sources(analysis: dict[str, Any]) -> set[str]:
    return set(analysis.get("reference_sources", []))


def run_experiment(settings: Settings) -> dict[str, Any]:
    torch.manual_seed(settings.seed)
    sentences, emb_path, n_tokens = prepare(settings)
    runs = train_both(settings, emb_path, len(sentences))
    analysis = analyse(sentences, n_tokens, runs)
    analysis["reference_sources"] = sorted({s.source for s in sentences if s.category == REFERENCE})
    settings_dict = {k: str(v) if isinstance(v, Path) else v for k, v in settings.__dict__.items()}
    return {
        "settings": settings_dict,
        "n_sentences": len(sentences),
        "n_held_out": len(runs["held_out"]),
        "runs": runs,
        "analysis": analysis,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: _jsonable(v)
            for k, v in obj.items()
            if k not in ("rows", "per_sentence", "held_out", "categories")
        }
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="python -m softsae_lens.experiments.minilm_embeddings",
        description="SoftSAE vs TopK at the same k on all-MiniLM-L6-v2 embeddings of Python's documentation.",
    )
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder (default {d.out})")
    p.add_argument(
        "--max-sentences", type=int, default=None, help="sample this many sentences (default: all)"
    )
    p.add_argument("--d-sae", type=int, default=d.d_sae, help=f"SAE width (default {d.d_sae})")
    p.add_argument(
        "--k", type=int, default=d.k, help=f"TopK's k and SoftSAE's target mean k (default {d.k})"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"rows per step (default {d.batch_size})",
    )
    p.add_argument(
        "--passes",
        type=float,
        default=d.passes,
        help=f"passes over the training sentences (default {d.passes})",
    )
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument(
        "--eval-fraction",
        type=float,
        default=d.eval_fraction,
        help=f"held-out share (default {d.eval_fraction})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")
    p.add_argument(
        "--embed-batch-size",
        type=int,
        default=d.embed_batch_size,
        help=f"sentences per MiniLM batch (default {d.embed_batch_size})",
    )
    p.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("d_sae", "k", "batch_size", "embed_batch_size", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be a positive integer")
    if args.max_sentences is not None and args.max_sentences < 100:
        p.error(f"--max-sentences={args.max_sentences}: must be at least 100")
    torch.set_num_threads(args.threads)
    return Settings(
        out=args.out,
        max_sentences=args.max_sentences,
        d_sae=args.d_sae,
        k=args.k,
        batch_size=args.batch_size,
        passes=args.passes,
        lr=args.lr,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        embed_batch_size=args.embed_batch_size,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    settings = parse_args(argv)
    start = time.perf_counter()
    result = run_experiment(settings)
    plot = make_plot(result, settings.out / "k_hat.png")
    result["wall_seconds"] = time.perf_counter() - start
    report = markdown_report(result)
    (settings.out / "results.md").write_text(
        report + f"\nWall time: {result['wall_seconds']:.0f} s.\n"
    )
    (settings.out / "results.json").write_text(json.dumps(_jsonable(result), indent=1))
    print(report)
    print(f"wrote {settings.out / 'results.md'}, {settings.out / 'results.json'}, {plot}")
    return result


if __name__ == "__main__":
    main()
