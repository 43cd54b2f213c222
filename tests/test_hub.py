"""Publishing and loading SoftSAEs through the Hugging Face hub layout (offline), and loading a
"soft" SAE without ``import softsae_lens`` (softsae_lens_autoload)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig

import softsae_lens_autoload
from softsae_lens import SoftTrainingSAE, SoftTrainingSAEConfig
from softsae_lens.hub import model_card, push_to_hub, save_for_hub

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "someone/soft-saes"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SOFT_ID = "blocks.0.hook_resid_post"
TOPK_ID = "topk/blocks.0.hook_resid_post"


def trained_like_soft(seed: int = 0) -> SoftTrainingSAE:
    """A SoftTrainingSAE with non-unit decoder rows and a non-trivial k-estimator, so that
    saving in inference form (norms folded) is visible in the outputs."""
    torch.manual_seed(seed)
    sae = SoftTrainingSAE(SoftTrainingSAEConfig(d_in=16, d_sae=64, k=4, total_training_steps=10))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(64, 1) + 0.5)
        sae.W_k_out.normal_(0, 0.1)
    return sae.eval()


def hf_cache_from_tree(tree: Path, hf_home: Path, repo_id: str = REPO_ID) -> None:
    """Lay ``tree`` out as the Hugging Face cache does after a download of ``repo_id``."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(tree, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def run_python(code: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, str(script)], env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def hub_tree(tmp_path_factory):
    """The repository tree for one SoftSAE (from the training object) and one TopK SAE (from a
    folder saved by SAELens), plus inputs and the outputs the loaded SAEs must reproduce."""
    root = tmp_path_factory.mktemp("hub")
    soft = trained_like_soft()
    torch.manual_seed(1)
    topk = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4)).eval()
    topk.save_inference_model(root / "topk_folder")
    x = torch.randn(20, 16)
    with torch.no_grad():
        torch.save({"x": x, "soft": soft(x), "topk": topk(x)}, root / "expected.pt")
    save_for_hub({SOFT_ID: soft, TOPK_ID: root / "topk_folder"}, root / "tree", repo_id=REPO_ID)
    return root


def test_save_for_hub_writes_the_layout_sae_lens_reads(hub_tree):
    tree = hub_tree / "tree"
    assert sorted(p.name for p in (tree / SOFT_ID).iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    assert (tree / TOPK_ID / "cfg.json").exists()
    assert json.loads((tree / SOFT_ID / "cfg.json").read_text())["architecture"] == "soft"
    # Inference form: decoder norms are folded, and the SAE computes what the training SAE
    # computed.
    expected = torch.load(hub_tree / "expected.pt")
    sae = SAE.load_from_disk(tree / SOFT_ID)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    torch.testing.assert_close(sae(expected["x"]), expected["soft"])
    card = (tree / "README.md").read_text()
    assert "library_name: saelens" in card
    assert f'SAE.from_pretrained("{REPO_ID}", "{SOFT_ID}")' in card
    assert "pip install softsae_lens" in card and f"`{TOPK_ID}` | topk" in card


def test_save_for_hub_refuses_what_would_not_load(tmp_path):
    soft = trained_like_soft()
    with pytest.raises(ValueError, match=r"sae_id='\.\./x': must be a relative folder name"):
        save_for_hub({"../x": soft}, tmp_path / "a")
    with pytest.raises(ValueError, match="sae_id='': must be"):
        save_for_hub({"": soft}, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no sae_weights.safetensors"):
        (tmp_path / "cfg_only").mkdir()
        (tmp_path / "cfg_only" / "cfg.json").write_text("{}")
        save_for_hub({"a": tmp_path / "cfg_only"}, tmp_path / "b")
    # A folder that SAELens cannot load (here: an architecture nobody registered) is caught
    # before anything is published.
    soft.save_model(tmp_path / "unknown")
    cfg = json.loads((tmp_path / "unknown" / "cfg.json").read_text())
    (tmp_path / "unknown" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "nobody"}))
    with pytest.raises(ValueError, match="(?s)does not load with SAE.load_from_disk.*KeyError"):
        save_for_hub({"a": tmp_path / "unknown"}, tmp_path / "c")
    save_for_hub({"a": soft}, tmp_path / "d")
    with pytest.raises(FileExistsError, match="already holds an SAE"):
        save_for_hub({"a": soft}, tmp_path / "d")


def test_training_soft_sae_saved_as_sae_lens_uploader_does_loads(tmp_path):
    # SAELens's upload_saes_to_huggingface calls save_model() on an SAE object: for a
    # SoftTrainingSAE that is the training format, which must load as an inference SoftSAE.
    soft = trained_like_soft()
    soft.save_model(tmp_path)
    x = torch.randn(8, 16)
    with torch.no_grad():
        torch.testing.assert_close(SAE.load_from_disk(tmp_path)(x), soft(x))


def test_push_to_hub_says_it_needs_the_network_when_offline(tmp_path):
    from huggingface_hub import constants

    assert (
        constants.HF_HUB_OFFLINE
    )  # conftest sets HF_HUB_OFFLINE=1 before anything imports the hub
    with pytest.raises(RuntimeError, match="needs the Hugging Face hub, but HF_HUB_OFFLINE is set"):
        push_to_hub({"a": trained_like_soft()}, REPO_ID)


@pytest.mark.slow  # a fresh interpreter imports torch and SAELens (about 15 s)
def test_from_pretrained_loads_from_the_hub_cache_offline_without_importing_softsae_lens(
    hub_tree, tmp_path
):
    """The installed autoload .pth (as site runs it at start-up), then plain SAELens: the
    repository tree in an offline Hugging Face cache loads with SAE.from_pretrained."""
    hf_cache_from_tree(hub_tree / "tree", tmp_path / "hf")
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(REPO_ROOT / "softsae_lens_autoload.pth", site_dir)
    result = run_python(
        f"""
        import site, sys
        site.addsitedir({str(site_dir)!r})
        assert "softsae_lens" not in sys.modules
        import torch
        from sae_lens import SAE

        print("softsae_lens imported with SAELens:", "softsae_lens" in sys.modules)
        expected = torch.load({str(hub_tree / "expected.pt")!r})
        soft = SAE.from_pretrained("{REPO_ID}", "{SOFT_ID}")
        topk = SAE.from_pretrained("{REPO_ID}", "{TOPK_ID}")
        torch.testing.assert_close(soft(expected["x"]), expected["soft"])
        torch.testing.assert_close(topk(expected["x"]), expected["topk"])
        print("loaded", type(soft).__name__, type(topk).__name__)
        """,
        {"HF_HOME": str(tmp_path / "hf"), softsae_lens_autoload.ENV_VAR: "1"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "softsae_lens imported with SAELens: True" in result.stdout
    assert "loaded SoftSAE TopKSAE" in result.stdout


def test_autoload_hook_is_inert_until_sae_lens_and_respects_opt_out(monkeypatch):
    # SAELens is already imported here: installing does nothing, so nothing is left behind.
    softsae_lens_autoload.install()
    assert not any(isinstance(f, softsae_lens_autoload.SaeLensImportHook) for f in sys.meta_path)
    hook = softsae_lens_autoload.SaeLensImportHook()
    assert hook.find_spec("numpy") is None and hook.find_spec("sae_lens_x") is None
    for value, expected in [
        ("0", False),
        ("false", False),
        ("Off", False),
        ("1", True),
        ("", True),
    ]:
        monkeypatch.setenv(softsae_lens_autoload.ENV_VAR, value)
        assert softsae_lens_autoload.enabled() is expected, value


def test_the_installation_carries_the_autoload_pth():
    # Look in site-packages only: the checkout's own softsae_lens.egg-info (which setuptools
    # leaves beside the sources on `pip install -e`) would answer first from the working directory.
    purelib = sysconfig.get_paths()["purelib"]
    found = list(importlib.metadata.distributions(name="softsae_lens", path=[purelib]))
    if not found:
        pytest.skip(f"softsae_lens is not installed in {purelib}; nothing to check")
    dist = found[0]
    names = {Path(str(f)).name: f for f in dist.files or []}
    assert "softsae_lens_autoload.pth" in names, (
        "this installation of softsae_lens predates the autoload .pth: reinstall it "
        "(make install, or pip install -e .)"
    )
    installed = Path(str(names["softsae_lens_autoload.pth"].locate()))
    assert installed.read_text() == (REPO_ROOT / "softsae_lens_autoload.pth").read_text()


def test_model_card_names_every_sae(hub_tree):
    sae = SAE.load_from_disk(hub_tree / "tree" / SOFT_ID)
    card = model_card("a/b", {"x": sae, "y/z": sae})
    assert "| `x` | soft | 16 | 64 | 4 |" in card and "| `y/z` | soft |" in card
