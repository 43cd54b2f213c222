"""SoftSAE vs TopK on sentence embeddings: a model of another kind, through the arrays-on-disk path.

The paper's second domain is pooled CLIP image embeddings; this is the same setting with a
model that runs offline here: all-MiniLM-L6-v2 sentence embeddings (384-d, mean-pooled and
L2-normalised, :mod:`softsae_lens.models.minilm`) of real English text nobody in this project wrote:
sentences of Python's own documentation (``pydoc_data.topics``, the language reference behind
``help("if")``, and the ``pydoc`` pages of a fixed list of standard-library modules).

Steps, one module each: split the documents into prose sentences (:mod:`.sentences`); embed
them once into ``OUT/embeddings.npy`` (:mod:`.embed`); train a SoftSAE and a TopK SAE at the
same ``k`` with the same steps, batches, learning rate and seed through
:func:`softsae_lens.training.on_arrays.train_on_activations` (SAELens's ``SAETrainer`` over the
``.npy``, memory-mapped) and score both on the same held-out sentences (:mod:`.train`); then
ask which sentences SoftSAE gives the most and the fewest latents (:mod:`.analysis`): Spearman
correlations of ``k_hat`` with length (tokens), vocabulary (mean rarity of the words:
``-log10`` of their frequency in this corpus) and code-likeness (share of words with ``_``,
``()``, dots or digits), mean ``k_hat`` per source, and the sentences at both ends. Then the
report (:mod:`.report`) and the figure (:mod:`.plots`); :mod:`.config` holds the settings and
flags, :mod:`.run` the orchestration.

Run::

    python -m softsae_lens.experiments.minilm       # all ~5,800 sentences, d_sae 1536, k 16
    python -m softsae_lens.experiments.minilm --max-sentences 2000 --passes 5   # a quick look

(``python -m softsae_lens.experiments.minilm`` is the same.) Outputs in ``--out`` (default
``out/minilm``): ``sentences.jsonl``, ``embeddings.npy``, the two saved SAEs (``soft/``,
``topk/``), ``results.json``, ``results.md`` and ``k_hat.png``. Image embeddings (CLIP: 512-d,
the paper's d_sae 4096 and k 220) go through the same ``train_activations`` path from a ``.npy``.
"""

from softsae_lens.experiments.minilm.analysis import analyse, vocabulary_features
from softsae_lens.experiments.minilm.config import Settings, parse_args
from softsae_lens.experiments.minilm.embed import prepare
from softsae_lens.experiments.minilm.plots import make_plot
from softsae_lens.experiments.minilm.report import jsonable, markdown_report
from softsae_lens.experiments.minilm.run import main, run_experiment
from softsae_lens.experiments.minilm.sentences import (
    MODULES,
    REFERENCE,
    Sentence,
    documents,
    split_sentences,
)
from softsae_lens.experiments.minilm.train import train_both

__all__ = [
    "MODULES",
    "REFERENCE",
    "Sentence",
    "Settings",
    "analyse",
    "documents",
    "jsonable",
    "main",
    "make_plot",
    "markdown_report",
    "parse_args",
    "prepare",
    "run_experiment",
    "split_sentences",
    "train_both",
    "vocabulary_features",
]
