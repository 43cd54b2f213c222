"""The example's data on disk: its sentences (``OUT/sentences.jsonl``), their MiniLM embeddings
(``OUT/embeddings.npy``) and token counts (``OUT/n_tokens.npy``), embedded once and reused while
the sentences stay the same (``OUT/embeddings.sha256``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from softsae_lens.experiments.minilm.config import Settings
from softsae_lens.experiments.minilm.sentences import Sentence, documents, split_sentences

__all__ = ["prepare"]


def prepare(settings: Settings) -> tuple[list[Sentence], Path, np.ndarray]:
    """Sentences (``OUT/sentences.jsonl``) and their embeddings (``OUT/embeddings.npy``),
    reused when the file for the same sentences is already there; also the token counts."""
    from softsae_lens.models.minilm import embed_sentences, load_minilm

    sentences = split_sentences(documents(progress=settings.progress))
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
