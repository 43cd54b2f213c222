"""softsae_lens.analysis and the analyze CLI, on a tiny random model with a briefly trained SoftSAE."""

import json
import os

import pytest
import torch
from helpers import (  # noqa: F401
    CONTEXT,
    D_MODEL,
    REPO,
    VOCAB,
    build_tiny_model,
    parse_html,
    run_analyze,
    tiny_runner_cfg,
    token_dataset,
)
from sae_lens import (
    SAE,
    LanguageModelSAETrainingRunner,
)

from softsae_lens import SoftSAE, SoftTrainingSAEConfig, configure_runner
from softsae_lens import analysis as A
from softsae_lens.analyze import main as analyze_main

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def trained_dir(tiny_model, tmp_path_factory):
    """A SoftSAE trained for 40 steps on the tiny model, saved with its metadata."""
    out = tmp_path_factory.mktemp("trained_soft")
    cfg = tiny_runner_cfg(
        out, sae=SoftTrainingSAEConfig(d_in=D_MODEL, d_sae=128, k=8, k_max=16.0), lr=3e-3
    )
    torch.manual_seed(0)
    LanguageModelSAETrainingRunner(
        configure_runner(cfg), override_model=tiny_model, override_dataset=token_dataset()
    ).run()
    return out


@pytest.fixture(scope="module")
def sae(trained_dir):
    loaded = SAE.load_from_disk(str(trained_dir))
    assert isinstance(loaded, SoftSAE)
    return loaded.eval()


@pytest.fixture
def tokens():
    return torch.randint(1, VOCAB, (3, CONTEXT), generator=torch.Generator().manual_seed(1))


def assert_clean(model):
    """No SAE left attached and no hook functions left anywhere."""
    assert model.acts_to_saes == {}
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------------------------ records


def test_records_match_a_manual_run_with_cache_with_saes(tiny_model, sae, tokens):
    records = A.token_k_report(tiny_model, sae, tokens, top_n=5)
    assert_clean(tiny_model)
    assert len(records) == tokens.numel()

    loss, cache = tiny_model.run_with_cache_with_saes(
        tokens, saes=[sae], use_error_term=False, return_type="loss", loss_per_token=True
    )
    k_hat = cache[f"{HOOK}.hook_sae_k"]
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    x = cache[f"{HOOK}.hook_sae_input"]
    recon = sae.decode(acts)
    clean = tiny_model(tokens, return_type="loss", loss_per_token=True)
    assert k_hat.std() > 0, "the trained SoftSAE should predict different k per token"

    for r in records:
        b, p = r.text_index, r.position
        assert r.token_id == int(tokens[b, p]) and r.token == str(int(tokens[b, p]))
        assert r.token_class == ("first" if p == 0 else "token_id")
        assert r.k_hat == pytest.approx(float(k_hat[b, p]), abs=1e-5)
        assert r.k == int(sae.round_k(k_hat[b, p]))
        assert r.l0 == int((acts[b, p] != 0).sum())
        assert r.recon_error == pytest.approx(float((x[b, p] - recon[b, p]).pow(2).sum()), rel=1e-4)
        values, indices = acts[b, p].topk(5)
        assert [i for i, _ in r.top_latents] == [
            int(i) for i, v in zip(indices, values, strict=True) if v != 0
        ]
        assert [v for _, v in r.top_latents] == pytest.approx([float(v) for v in values if v != 0])
        if p < CONTEXT - 1:
            assert r.loss == pytest.approx(float(clean[b, p]), abs=1e-5)
            assert r.loss_spliced == pytest.approx(float(loss[b, p]), abs=1e-5)
        else:
            assert r.loss is None and r.loss_spliced is None
        assert (r.surprisal is None) == (p == 0)
    # k_hat seen on the hook is the SAE's own prediction.
    torch.testing.assert_close(k_hat, sae.predict_k(x))


def test_report_accepts_1d_tokens_and_lists(tiny_model, sae, tokens):
    one = A.token_k_report(tiny_model, sae, tokens[0])
    several = A.token_k_report(tiny_model, sae, [tokens[0], tokens[1, :5]], include_loss=False)
    assert [r.k_hat for r in one] == pytest.approx([r.k_hat for r in several[:CONTEXT]])
    assert [r.text_index for r in several] == [0] * CONTEXT + [1] * 5
    assert all(r.loss is None for r in several)
    with pytest.raises(TypeError, match="no tokenizer"):
        A.token_k_report(tiny_model, sae, "some text")
    with pytest.raises(TypeError, match="integer ids"):
        A.token_k_report(tiny_model, sae, tokens.float())


def test_sae_on_a_missing_hook_raises_and_leaves_the_model_clean(tiny_model, sae, tokens):
    sae.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    try:
        with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
            A.token_k_report(tiny_model, sae, tokens)
    finally:
        sae.cfg.metadata.hook_name = HOOK
    assert_clean(tiny_model)


# --------------------------------------------------------------------------- intervening


def test_override_k_to_1_gives_l0_1_on_every_token(tiny_model, sae, tokens):
    with A.with_k_override(tiny_model, sae, k=1):
        _, cache = tiny_model.run_with_cache(tokens)
        records = A.token_k_report(tiny_model, sae, tokens)
    assert_clean(tiny_model)
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert ((acts != 0).sum(-1) == 1).all()
    assert (cache[f"{HOOK}.hook_sae_k"] == 1).all()
    assert all(r.l0 == 1 and r.k == 1 and r.k_hat == 1.0 for r in records)
    # Outside the block, the SAE predicts its own k again.
    assert any(r.l0 > 1 for r in A.token_k_report(tiny_model, sae, tokens))


def test_scale_and_cap_overrides(tiny_model, sae, tokens):
    base = A.token_k_report(tiny_model, sae, tokens, include_loss=False)
    with A.with_k_override(tiny_model, sae, cap=3):
        capped = A.token_k_report(tiny_model, sae, tokens, include_loss=False)
    with A.with_k_override(tiny_model, sae, scale=0.5):
        halved = A.token_k_report(tiny_model, sae, tokens, include_loss=False)
    for b, c, h in zip(base, capped, halved, strict=True):
        assert c.k_hat == pytest.approx(min(b.k_hat, 3.0)) and c.l0 <= 3
        assert h.k_hat == pytest.approx(b.k_hat * 0.5, rel=1e-5)
        assert h.k == int(sae.round_k(torch.tensor(b.k_hat * 0.5)))


def test_override_on_the_bare_sae_and_when_already_attached(tiny_model, sae, tokens):
    x = torch.randn(4, D_MODEL)
    with A.with_k_override(None, sae, k=2, splice=False):
        assert ((sae.encode(x) != 0).sum(-1) == 2).all()
    assert not sae.hook_sae_k.fwd_hooks
    tiny_model.add_sae(sae)
    try:
        with A.with_k_override(tiny_model, sae, k=1, splice=False):
            # run_with_hooks resets its own hooks at the end; the override must survive it.
            tiny_model.run_with_hooks(
                tokens, fwd_hooks=[(f"{HOOK}.hook_sae_k", lambda t, hook: None)]
            )
            _, cache = tiny_model.run_with_cache(tokens)
        assert ((cache[f"{HOOK}.hook_sae_acts_post"] != 0).sum(-1) == 1).all()
    finally:
        tiny_model.reset_saes()
    assert_clean(tiny_model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, r"exactly one of k, scale or cap must be given, got k=None, scale=None, cap=None"),
        (dict(k=2, scale=0.5), r"exactly one .* got k=2, scale=0.5, cap=None"),
        (dict(k=0), r"k must be a number in \[1, 16\] .* got k=0"),
        (dict(k=17), r"k must be a number in \[1, 16\] .* got k=17"),
        (dict(k=True), r"got k=True"),
        (dict(scale=-1.0), r"scale must be a positive finite number, got scale=-1.0"),
        (dict(scale=float("nan")), r"got scale=nan"),
        (dict(cap=0.5), r"cap must be a finite number >= 1, got cap=0.5"),
    ],
)
def test_bad_override_arguments_raise(tiny_model, sae, kwargs, message):
    with pytest.raises(ValueError, match=message), A.with_k_override(tiny_model, sae, **kwargs):
        pass
    assert_clean(tiny_model)


def test_loss_with_k_override(tiny_model, sae, tokens):
    result = A.loss_with_k_override(tiny_model, sae, tokens, k=1)
    assert_clean(tiny_model)
    clean = tiny_model(tokens, return_type="loss", loss_per_token=True)
    spliced = tiny_model.run_with_saes(
        tokens, saes=[sae], use_error_term=False, return_type="loss", loss_per_token=True
    )
    torch.testing.assert_close(result.clean_per_token, clean.flatten())
    torch.testing.assert_close(result.spliced_per_token, spliced.flatten())
    assert result.clean == pytest.approx(float(clean.mean()), rel=1e-5)
    assert result.spliced == pytest.approx(float(spliced.mean()), rel=1e-5)
    assert result.l0_override_mean == 1.0 and result.l0_spliced_mean > 1.0
    assert result.override_per_token.shape == (tokens.shape[0] * (CONTEXT - 1),)
    assert result.delta_vs_spliced == pytest.approx(result.override - result.spliced)
    # Overriding with the SAE's own prediction (cap at k_max) changes nothing.
    same = A.loss_with_k_override(tiny_model, sae, tokens, cap=sae.cfg.k_max)
    assert same.override == pytest.approx(same.spliced, rel=1e-6)
    assert json.dumps(result.summary())


# ---------------------------------------------------------------------- corpus statistics


def test_classify_token():
    assert A.classify_token("<|im_start|>", 0) == "first"
    assert A.classify_token(" the", 3) == "word"
    assert A.classify_token(" ", 3) == "whitespace_punct"
    assert A.classify_token("\n\n", 3) == "whitespace_punct"
    assert A.classify_token(" ,", 3) == "whitespace_punct"
    assert A.classify_token("\u2014", 3) == "whitespace_punct"
    assert A.classify_token(" 1,000", 3) == "number"
    assert A.classify_token("3.14", 3) == "number"
    assert A.classify_token("x2", 3) == "word"
    assert A.classify_token("</s>", 3, is_special=True) == "special"
    assert A.classify_token("17", 3, has_text=False) == "token_id"


def _record(pos, k_hat, loss, cls="word", text_index=0):
    return A.TokenRecord(
        text_index=text_index,
        position=pos,
        token_id=pos,
        token="t",
        token_class=cls,
        k_hat=k_hat,
        k=round(k_hat),
        l0=round(k_hat),
        recon_error=1.0,
        recon_error_rel=0.1,
        loss=loss,
        surprisal=loss,
    )


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    k = (torch.rand(200, generator=g) * 10).round()  # many ties
    loss = k * 0.3 + torch.randn(200, generator=g)
    records = [
        _record(i + 1, float(a), float(b)) for i, (a, b) in enumerate(zip(k, loss, strict=True))
    ]
    out = A.k_loss_spearman(records)
    expected = spearmanr(k.numpy(), loss.numpy())
    assert out["n"] == 200
    assert out["rho"] == pytest.approx(expected.statistic, abs=1e-9)
    assert out["p_value"] == pytest.approx(expected.pvalue, rel=1e-6)
    constant = [_record(i + 1, 4.0, float(i)) for i in range(10)]
    assert A.k_loss_spearman(constant)["rho"] is None


def test_k_stats_by_class():
    records = [_record(0, 9.0, 5.0, "first")]
    records += [_record(i, float(i), 1.0, "word") for i in range(1, 11)]
    records += [_record(i, 2.0, None, "whitespace_punct") for i in range(11, 14)]
    stats = A.k_stats_by_class(records)
    assert list(stats) == ["first", "whitespace_punct", "word", "all"]
    assert stats["word"]["count"] == 10 and stats["word"]["mean"] == pytest.approx(5.5)
    assert stats["word"]["median"] == pytest.approx(5.5) and stats["word"]["min"] == 1.0
    assert stats["word"]["std"] == pytest.approx(float(torch.arange(1.0, 11).std()))
    assert stats["whitespace_punct"]["std"] == 0.0 and stats["all"]["count"] == 14
    # Position 0 is left out of the correlation by default.
    assert A.k_loss_spearman(records)["n"] == 10


# ---------------------------------------------------------------------------------- HTML


def test_html_is_well_formed_self_contained_and_holds_every_token(tiny_model, sae, tokens):
    records = A.token_k_report(tiny_model, sae, tokens)
    # Tokens a tokenizer can produce: markup, quotes, newlines, spaces, tabs, empty.
    tricky = ["<b>", ' "x" & y', "\n", " \n\n  ", "\tz", "", "</script>", "caf\u00e9"]
    for r, text in zip(records[1:], tricky, strict=False):
        r.token = text
    page = A.render_html(records, title="t <1>", subtitle="m & h")
    spans = parse_html(page)
    assert len(spans) == len(records)
    for (attrs, text), r in zip(spans, records, strict=True):
        assert text == r.token
        assert attrs["data-tok"] == r.token
        assert float(attrs["data-k"]) == pytest.approx(r.k_hat, abs=1e-3)
        assert int(attrs["data-l0"]) == r.l0
        top = [(int(i), float(v)) for i, v in (p.split(":") for p in attrs["data-top"].split())]
        assert [i for i, _ in top] == [i for i, _ in r.top_latents]
        assert attrs["style"].startswith("background:#")
    lowered = page.lower()
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert external not in lowered
    assert "<script>" in page and "linear-gradient" in page
    assert page.count("<br>") == sum(r.token.count("\n") for r in records)


def test_write_analysis_files(tiny_model, sae, tokens, tmp_path):
    records = A.token_k_report(tiny_model, sae, tokens)
    paths = A.write_analysis(records, tmp_path, sae=sae, meta={"model": "tiny"})
    assert {p.name for p in paths.values()} == {
        "tokens.html",
        "tokens.png",
        "records.json",
        "corpus_stats.json",
        "corpus_stats.png",
    }
    for name in ("tokens.png", "corpus_stats.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "records.json").read_text())
    assert saved["sae"]["k"] == 8 and len(saved["records"]) == len(records)
    assert saved["records"][5] == json.loads(json.dumps(records[5].to_dict()))
    stats = json.loads((tmp_path / "corpus_stats.json").read_text())
    assert set(stats["k_hat_by_class"]) == {"first", "token_id", "all"}
    assert stats["spearman_k_hat_vs_loss"]["n"] == tokens.shape[0] * (CONTEXT - 2)


# ----------------------------------------------------------------------------------- CLI


def test_cli_main_on_the_tiny_model(tiny_model, trained_dir, tmp_path, capsys):
    out = tmp_path / "analysis"
    ids = " ".join(str(i) for i in range(3, 3 + CONTEXT))
    stats = analyze_main(
        [
            "--sae",
            str(trained_dir),
            "--token-ids",
            ids,
            "--token-ids",
            "5,6,7,8",
            "--out",
            str(out),
            "--top-latents",
            "4",
            "--k-override",
            "1",
        ],
        model=tiny_model,
    )
    assert_clean(tiny_model)
    printed = capsys.readouterr().out
    assert "mean k_hat" in printed and "Spearman(k_hat, next-token loss)" in printed
    assert stats["n_tokens"] == CONTEXT + 4 and stats["n_texts"] == 2
    assert stats["k_override"]["l0_override_mean"] == 1.0
    for name in (
        "tokens.html",
        "tokens.png",
        "records.json",
        "corpus_stats.json",
        "corpus_stats.png",
    ):
        assert (out / name).stat().st_size > 0
    records = json.loads((out / "records.json").read_text())["records"]
    assert all(len(r["top_latents"]) <= 4 for r in records)
    assert [r["token"] for r in records[CONTEXT:]] == ["5", "6", "7", "8"]
    assert len(parse_html((out / "tokens.html").read_text())) == CONTEXT + 4


def test_cli_subprocess_with_model_factory(trained_dir, tmp_path):
    out = tmp_path / "cli"
    proc = run_analyze(
        ["--sae", str(trained_dir), "--token-ids", "1 2 3 4 5 6 7 8", "--out", str(out)]
        + ["--model-factory", "helpers:build_tiny_model", "--no-png"],
        cwd=tmp_path,
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    )
    assert proc.returncode == 0, proc.stderr
    assert "mean k_hat" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "corpus_stats.json",
        "records.json",
        "tokens.html",
    ]


def test_cli_requires_some_text(trained_dir, capsys):
    with pytest.raises(SystemExit):
        analyze_main(["--sae", str(trained_dir)])
    assert "--text" in capsys.readouterr().err


# ------------------------------------------------------------------- SmolLM2 end to end


@pytest.mark.slow
@pytest.mark.smollm2
def test_cli_on_smollm2_bridge(tmp_path):
    """The real CLI on SmolLM2 (SAETransformerBridge) with a random SoftSAE at d_in=576."""
    from softsae_lens import SoftSAEConfig
    from softsae_lens.models import smollm2

    torch.manual_seed(0)
    sae = SoftSAE(SoftSAEConfig(d_in=smollm2.D_MODEL, d_sae=1024, k=8))
    with torch.no_grad():
        sae.W_k_out.normal_(0, 0.05)
    sae.cfg.metadata.hook_name = smollm2.layer_hook_name(3)
    sae.cfg.metadata.model_name = smollm2.DEFAULT_MODEL_NAME
    sae.save_model(tmp_path / "sae")
    out = tmp_path / "analysis"
    text = "The cat sat on the mat.\nIn 1969, 3 people flew to the Moon!"
    stats = analyze_main(
        ["--sae", str(tmp_path / "sae"), "--text", text, "--out", str(out), "--k-cap", "2"]
    )
    records = json.loads((out / "records.json").read_text())
    assert records["hook_name_resolved"] == "blocks.3.hook_out"
    tokens = [r["token"] for r in records["records"]]
    assert "".join(tokens[1:]) == text
    classes = {r["token_class"] for r in records["records"]}
    assert {"first", "word", "number", "whitespace_punct"} <= classes
    assert stats["k_override"]["l0_override_mean"] <= 2.0
    assert stats["spearman_k_hat_vs_loss"]["rho"] is not None
    spans = parse_html((out / "tokens.html").read_text())
    assert [text for _, text in spans] == tokens


def test_token_ids_excluded_on_a_hooked_transformer(tiny_model, sae, tokens):
    first = int(tokens[0, 0])
    records = A.token_k_report(tiny_model, sae, tokens, exclude_special_tokens=[first])
    assert_clean(tiny_model)
    assert [r.excluded for r in records] == [r.token_id == first for r in records]
    spliced = tiny_model.run_with_saes(
        tokens,
        saes=[sae],
        use_error_term=False,
        exclude_special_tokens=[first],
        return_type="loss",
        loss_per_token=True,
    )
    got = [r.loss_spliced for r in records if r.loss_spliced is not None]
    assert got == pytest.approx(spliced.flatten().tolist(), abs=1e-5)
    with pytest.raises(TypeError, match="exclude_special_tokens must be True, False or a list"):
        A.token_k_report(tiny_model, sae, tokens, exclude_special_tokens=["<s>"])
