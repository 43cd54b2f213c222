"""Per-latent dashboards (softsae_lens.dashboards) on a tiny random Llama with a real tokenizer.

Numbers are checked against a direct computation over every token (top contexts are the true
maxima, density is (acts > 0).mean(), logit effects are the product through the Hugging Face
model's own norm weight and lm_head), the Neuronpedia export against SAEDashboard's field names
and types, and the pages in headless Chromium (Debian's ``chromium`` package).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import quote

import pytest
import torch
from helpers import TEXTS, boot_plain_bridge, build_tiny_hf_model, random_soft_sae

from softsae_lens.dashboards import DashboardsConfig
from softsae_lens.dashboards.__main__ import main, run
from softsae_lens.models.bridge import special_token_mask

HOOK = "blocks.0.hook_out"
CHROMIUM_MISSING = (
    "needs Debian's chromium package for headless rendering: "
    "apt-get install chromium (make test installs it)"
)
LATENTS = 6
MORE_TEXT = [
    "The quick brown fox jumps over the lazy dog. 42 is the answer; 7 is prime.",
    "import os\nfor i in range(10):\n    print(i * i)\n",
    "Lists, tuples and dicts are containers. A set holds unique items.",
]


def _topk_sae(d_sae=64, k=4):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=d_sae, k=k))
    sae.cfg.metadata.hook_name = HOOK
    return sae.eval()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="module")
def bridge(tiny_folder):
    return boot_plain_bridge(tiny_folder)


def _standard_sae(d_sae=64):
    """SAELens's plain ReLU SAE: dense activations (about half the latents fire on a token)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(2)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=d_sae))
    sae.cfg.metadata.hook_name = HOOK
    return sae.eval()


@pytest.fixture(scope="module", params=["soft", "topk", "standard"])
def built(request, bridge, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"dash_{request.param}")
    make = {"soft": lambda: random_soft_sae(HOOK), "topk": _topk_sae, "standard": _standard_sae}
    sae = make[request.param]()
    sae.save_model(root / "sae")
    cfg = DashboardsConfig(
        sae=root / "sae",
        text=(TEXTS + MORE_TEXT) * 2,
        context_size=16,
        batch_rows=4,
        latents=str(LATENTS),
        top_by="frequency",
        n_top=5,
        before=4,
        after=2,
        out=root / "out",
    )
    result = run(cfg, model=bridge, progress=False)
    return request.param, sae, cfg, result


def _rows(bridge, cfg):
    from softsae_lens.dashboards.stream import token_rows

    return token_rows(bridge, cfg.text, context_size=cfg.context_size)


def _direct(bridge, sae, cfg):
    """acts [N, d_sae], k_hat [N], kept [N] over every streamed position, computed directly."""
    from softsae_lens.dashboards.stream import batches_of

    acts, k_hats, kept = [], [], []
    for tokens in batches_of(_rows(bridge, cfg), cfg.batch_rows):
        _, cache = bridge.run_with_cache(tokens, names_filter=[HOOK])
        x = cache[HOOK]
        acts.append(sae.encode(x).reshape(-1, sae.cfg.d_sae))
        if hasattr(sae, "predict_k"):
            k_hats.append(sae.predict_k(x).reshape(-1))
        special = special_token_mask(tokens, [0, 1, 2])
        kept.append(~special.reshape(-1))
    kept = torch.cat(kept)
    acts = torch.cat(acts) * kept.unsqueeze(1)
    return acts.detach(), (torch.cat(k_hats).detach() if k_hats else None), kept


@torch.no_grad()
def test_numbers_match_direct_computation(built, bridge):
    arch, sae, cfg, result = built
    dash = result["dashboards"]
    acts, k_hat, kept = _direct(bridge, sae, cfg)
    n = int(kept.sum())
    density = (acts[kept] > 0).float().mean(0)
    assert dash.summary["n_tokens"] == n
    torch.testing.assert_close(
        torch.tensor(dash.summary["density"], dtype=torch.float32), density, atol=1e-6, rtol=0
    )
    # --top-by frequency: the most frequent latents, in order
    counts = (acts > 0).sum(0)
    chosen = [lat["index"] for lat in dash.latents]
    assert len(chosen) == LATENTS
    assert [int(counts[i]) for i in chosen] == sorted(counts.tolist(), reverse=True)[:LATENTS]
    assert dash.summary["dead"] == (counts == 0).nonzero().flatten().tolist()

    # logit effects: through the Hugging Face model's own final RMSNorm weight and lm_head
    hf = bridge.original_model
    w_u = hf.lm_head.weight.detach().T.float()
    scale = hf.model.norm.weight.detach().float()
    lengths = [len(r) for r in _rows(bridge, cfg)]
    row_starts = [sum(lengths[:j]) for j in range(len(lengths))]
    for lat in dash.latents:
        i = lat["index"]
        col = acts[:, i]
        assert lat["density"] == pytest.approx(float((col[kept] > 0).float().mean()))
        assert lat["max"] == pytest.approx(float(col.max()), rel=1e-5)
        # top contexts are the true maxima, and each context shows the activations around it
        want = col.topk(cfg.n_top).values
        want = want[want > 0]
        got = torch.tensor([c["value"] for c in lat["top"]])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for c in lat["top"] + [e for g in lat["intervals"] for e in g["examples"]]:
            assert c["acts"][c["index"]] == pytest.approx(c["value"], rel=1e-5)
            # the whole window is this latent's activations around the token, in its row
            start = row_starts[c["row"]] + c["pos"] - c["index"]
            want_window = col[start : start + len(c["acts"])]
            torch.testing.assert_close(torch.tensor(c["acts"]), want_window, atol=1e-5, rtol=1e-5)
        effect = (sae.W_dec[i].float() * scale) @ w_u
        top_v, top_i = effect.topk(cfg.n_logits)
        assert lat["logits"]["pos_ids"] == top_i.tolist()
        torch.testing.assert_close(
            torch.tensor([v for _, v in lat["logits"]["pos"]]), top_v, atol=1e-5, rtol=1e-5
        )
        bottom_v, _ = (-effect).topk(cfg.n_logits)
        torch.testing.assert_close(
            torch.tensor([v for _, v in lat["logits"]["neg"]]), -bottom_v, atol=1e-5, rtol=1e-5
        )
        assert sum(lat["hist"]["counts"]) == lat["count"]
        tops = [c["tokens"][c["index"]] for c in lat["top"][:5]]
        assert dash.summary["top_tokens"][i] == list(dict.fromkeys(tops))
        for group in lat["intervals"]:
            for c in group["examples"]:
                assert group["lo"] - 1e-6 <= c["value"] <= group["hi"] + 1e-6
        if arch == "soft":
            fired = col > 0
            assert lat["mean_k_hat_fired"] == pytest.approx(float(k_hat[fired].mean()), rel=1e-4)
            assert lat["mean_k_hat"] == pytest.approx(float(k_hat[kept].mean()), rel=1e-4)
            for c in lat["top"]:
                assert c["k_hat"] == pytest.approx(c["k_hats"][c["index"]])
        else:
            assert "mean_k_hat_fired" not in lat


def test_explicit_latents_and_index_selection(bridge, tmp_path):
    sae = random_soft_sae(HOOK)
    sae.save_model(tmp_path / "sae")
    common = dict(sae=tmp_path / "sae", text=TEXTS, context_size=16, neuronpedia=False)
    result = run(
        DashboardsConfig(**common, latents="3,17,5", out=tmp_path / "a"),
        model=bridge,
        progress=False,
    )
    assert [lat["index"] for lat in result["dashboards"].latents] == [3, 5, 17]
    assert sorted(p.name for p in (tmp_path / "a" / "latents").iterdir()) == [
        "latent_17.html",
        "latent_3.html",
        "latent_5.html",
    ]
    result = run(
        DashboardsConfig(**common, latents="4", top_by="index", out=tmp_path / "b"),
        model=bridge,
        progress=False,
    )
    assert [lat["index"] for lat in result["dashboards"].latents] == [0, 1, 2, 3]


def test_neuronpedia_export_fields_and_types(built):
    arch, sae, cfg, result = built
    files = result["paths"]["neuronpedia"]
    batch = json.loads(files[0].read_text())
    assert files[0].name == "batch-0.json"
    assert set(batch) == {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
    assert isinstance(batch["model_id"], str) and isinstance(batch["layer"], int)
    assert batch["layer"] == 0 and isinstance(batch["sae_set"], str)
    assert batch["sae_id_suffix"] is None
    # SAEDashboard's NeuronpediaDashboardFeature.to_dict(), field by field
    types = {
        "feature_index": int,
        "neuron_alignment_indices": list,
        "neuron_alignment_values": list,
        "neuron_alignment_l1": list,
        "correlated_neurons_indices": list,
        "correlated_neurons_l1": list,
        "correlated_neurons_pearson": list,
        "correlated_features_indices": list,
        "correlated_features_l1": list,
        "correlated_features_pearson": list,
        "neg_str": list,
        "neg_values": list,
        "pos_str": list,
        "pos_values": list,
        "frac_nonzero": float,
        "freq_hist_data_bar_values": list,
        "freq_hist_data_bar_heights": list,
        "logits_hist_data_bar_heights": list,
        "logits_hist_data_bar_values": list,
        "n_prompts_total": int,
        "n_tokens_in_prompt": int,
        "dataset": str,
        "decoder_weights_dist": list,
        "activations": list,
        "vector": list,
    }
    dash = result["dashboards"]
    assert len(batch["features"]) == LATENTS
    for feature, lat in zip(batch["features"], dash.latents, strict=True):
        assert set(feature) == set(types)
        for name, kind in types.items():
            assert isinstance(feature[name], kind), name
        assert feature["feature_index"] == lat["index"]
        assert feature["frac_nonzero"] == pytest.approx(lat["density"])
        assert all(isinstance(s, str) for s in feature["pos_str"] + feature["neg_str"])
        assert all(isinstance(v, float) for v in feature["pos_values"] + feature["neg_values"])
        assert len(feature["pos_str"]) == len(feature["pos_values"]) == cfg.n_logits
        assert all(isinstance(h, int) for h in feature["freq_hist_data_bar_heights"])
        assert all(isinstance(v, float) for v in feature["freq_hist_data_bar_values"])
        assert feature["neuron_alignment_indices"] and all(
            isinstance(i, int) for i in feature["neuron_alignment_indices"]
        )
        top = [a for a in feature["activations"] if a["bin_min"] == -1]
        assert len(top) == len(lat["top"])
        for a in feature["activations"]:
            assert set(a) == {
                "bin_min",
                "bin_max",
                "bin_contains",
                "tokens",
                "values",
                "qualifying_token_index",
            }
            assert all(isinstance(a[k], float) for k in ("bin_min", "bin_max", "bin_contains"))
            assert all(isinstance(t, str) for t in a["tokens"])
            assert all(isinstance(v, float) for v in a["values"])
            assert len(a["tokens"]) == len(a["values"])
            assert isinstance(a["qualifying_token_index"], int)
            assert 0 <= a["qualifying_token_index"] < len(a["tokens"])
        assert top[0]["values"][top[0]["qualifying_token_index"]] == pytest.approx(
            lat["max"], abs=1e-4
        )
    skipped = json.loads(files[-1].read_text())
    assert files[-1].name == "skipped_indexes.json"
    assert len(skipped["skipped_indexes"]) == sae.cfg.d_sae - LATENTS


def test_cli_runs_offline_in_a_fresh_process(tiny_folder, tmp_path):
    """``python -m softsae_lens.dashboards`` with --model-path: loads, prints the cost, writes."""
    sae = _topk_sae()
    sae.save_model(tmp_path / "sae")
    (tmp_path / "notes.txt").write_text(MORE_TEXT[1], encoding="utf-8")
    args = ["--sae", str(tmp_path / "sae"), "--model-path", str(tiny_folder)]
    args += ["--text", TEXTS[0], TEXTS[1], "--text-file", str(tmp_path / "notes.txt")]
    args += ["--latents", "3", "--top-by", "max", "--out", str(tmp_path / "out")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "softsae_lens.dashboards", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "token positions in" in done.stdout and "MiB" in done.stdout  # the cost, up front
    assert "tokens/s" in done.stdout and "wrote" in done.stdout
    assert len(list((tmp_path / "out" / "latents").glob("latent_*.html"))) == 3
    data = json.loads((tmp_path / "out" / "dashboards.json").read_text())
    maxima = sorted(data["summary"]["max"], reverse=True)[:3]
    assert sorted((lat["max"] for lat in data["latents"]), reverse=True) == maxima


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_soft_sae_from_its_metadata_on_the_held_out_corpus(tmp_path):
    """The SAE's metadata names SmolLM2: the command finds the model offline by itself."""
    from softsae_lens import SoftSAE, SoftSAEConfig
    from softsae_lens.models.smollm2 import D_MODEL, DEFAULT_MODEL_NAME

    torch.manual_seed(0)
    sae = SoftSAE(SoftSAEConfig(d_in=D_MODEL, d_sae=1024, k=16))
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    sae.cfg.metadata.model_name = DEFAULT_MODEL_NAME
    sae.save_model(tmp_path / "sae")
    result = main(
        ["--sae", str(tmp_path / "sae"), "--corpus", "pydoc", "--max-tokens", "512"]
        + ["--latents", "4", "--out", str(tmp_path / "out")]
    )
    info = result["info"]
    assert info["model"] == DEFAULT_MODEL_NAME and info["hook_name"] == "blocks.3.hook_out"
    assert info["n_positions"] == 512 and info["final_norm_scale"] and info["has_k_hat"]
    assert info["dataset"].startswith("pydoc")
    assert len(result["dashboards"].latents) == 4
    assert all(lat["logits"] is not None for lat in result["dashboards"].latents)


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--sae", str(tmp_path), "--text", "hello"])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "--sae" in message and "cfg.json" in message
    (tmp_path / "cfg.json").write_text("{}")
    for argv, words in [
        (["--latents", "x,y"], ["--latents", "comma-separated"]),
        (["--top-by", "size"], ["--top-by", "frequency"]),
        (["--corpus", "novels"], ["--corpus", "pydoc"]),
    ]:
        with pytest.raises(SystemExit):
            main(["--sae", str(tmp_path), "--text", "hello", *argv])
        message = capsys.readouterr().err.strip()
        assert message.count("\n") == 0 and all(w in message for w in words), message


# ------------------------------------------------------------------ pages in a browser


class _Visible(HTMLParser):
    """Text a browser shows: skips <script>, <style>, <title> and elements with ``hidden``."""

    VOID = {"br", "meta", "img", "hr", "input", "link", "rect"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        hidden = any(k == "hidden" for k, _ in attrs) or tag in {"script", "style", "title"}
        self.stack.append(hidden or (self.stack[-1] if self.stack else False))

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not (self.stack and self.stack[-1]):
            self.parts.append(data)


def _visible_text(html):
    parser = _Visible()
    parser.feed(html)
    return re.sub(r"\s+", " ", "".join(parser.parts))


def _chromium():
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("SOFTSAE_REQUIRE_CHROMIUM") == "1":
            pytest.fail(CHROMIUM_MISSING + " [SOFTSAE_REQUIRE_CHROMIUM=1]", pytrace=False)
        pytest.skip(CHROMIUM_MISSING)
    return path


def _browse(url, tmp_path, *extra):
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *extra,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_pages_render_in_headless_chromium(built, tmp_path):
    arch, sae, cfg, result = built
    dash = result["dashboards"]
    index = result["paths"]["index"]
    # the index, searched for one latent through its URL, sorted by density
    first = dash.latents[0]["index"]
    dom = _browse(f"{index.as_uri()}#q={first}&sort=density", tmp_path, "--dump-dom")
    text = _visible_text(dom)
    assert "Dead latents" in text and "Dense latents" in text
    assert f"{sae.cfg.d_sae} latents" in text
    assert re.search(r"\b1 shown\b", text), text[:500]  # the search box filtered to one row
    assert 'class="sorted-desc"' in dom and "density" in dom
    rows = re.findall(r'<tr data-latent="(\d+)"(?![^>]*hidden)', dom)
    assert rows == [str(first)]
    # a search for a token the latent promotes keeps that latent's row
    word = max(dash.latents[0]["logits"]["pos"][0][0].split(), key=len, default="")
    if word:
        dom = _browse(f"{index.as_uri()}#q={quote(word)}", tmp_path, "--dump-dom")
        rows = re.findall(r'<tr data-latent="(\d+)"(?![^>]*hidden)', dom)
        assert str(first) in rows
    # every tracked latent is searchable by its top activating tokens, pages or not
    no_page = [
        i
        for i, toks in enumerate(dash.summary["top_tokens"])
        if i not in {lat["index"] for lat in dash.latents} and any(len(t.strip()) > 2 for t in toks)
    ]
    if no_page:
        word = next(t.strip() for t in dash.summary["top_tokens"][no_page[0]] if len(t.strip()) > 2)
        dom = _browse(f"{index.as_uri()}#q={quote(word)}", tmp_path, "--dump-dom")
        assert str(no_page[0]) in re.findall(r'<tr data-latent="(\d+)"(?![^>]*hidden)', dom)
    # the whole index sorted by density: visible order follows the densities
    dom = _browse(f"{index.as_uri()}#sort=density", tmp_path, "--dump-dom")
    order = [int(i) for i in re.findall(r'<tr data-latent="(\d+)"', dom)]
    densities = [dash.summary["density"][i] for i in order]
    assert densities == sorted(densities, reverse=True) and len(order) == sae.cfg.d_sae

    # one latent page
    page = result["paths"]["latents"][0]
    dom = _browse(page.as_uri(), tmp_path, "--dump-dom")
    text = _visible_text(dom)
    lat = dash.latents[0]
    assert f"latent {lat['index']}" in text
    assert "Top activations" in text and "Logit effect" in text and "promoted" in text
    assert "Activation density" in text and f"({lat['count']:,} of" in text
    shown = [c["tokens"][c["index"]] for c in lat["top"]]
    words = [t.replace("\n", "\u21b5") for t in shown if t.strip()]
    assert all(w in text for w in words)  # every visible top token is on the page
    assert len(re.findall(r'class="t q', dom)) >= len(lat["top"])  # each one outlined
    assert lat["logits"]["pos"][0][0].replace("\n", "\u21b5") in text
    assert dom.count('class="ctx') >= len(lat["top"])
    if arch == "soft":
        assert "mean k_hat when firing" in text and "k\u0302" in text
    else:
        assert "k_hat" not in text
    shot = tmp_path / "latent.png"
    _browse(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1200,900")
    assert shot.is_file() and shot.stat().st_size > 10_000
    # nothing is fetched from anywhere: no external URL in any page
    for path in [index, *result["paths"]["latents"]]:
        assert not re.search(r"(src|href)=\"(https?:)?//", path.read_text())
