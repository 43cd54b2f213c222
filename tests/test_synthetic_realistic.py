"""The realistic regime of the ground-truth experiment: its data, replayed stream, diagnostics
and the experiment-only SoftSAE training variants.

The quick end-to-end run (all three regimes through the CLI) is checked in
``test_synthetic_experiment.py``; here the pieces are checked directly, on a tiny model.
"""

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.synthetic import (
    FoldedNormalMagnitudeConfig,
    HierarchyConfig,
    LowRankCorrelationConfig,
    ZipfianFiringProbabilityConfig,
)
from sae_lens.synthetic.hierarchy import HierarchyNode

from softsae_lens.experiments.synthetic.hierarchy_eval import (
    hierarchy_diagnostics,
    hierarchy_tables,
)
from softsae_lens.experiments.synthetic.prototype import (
    ProtoSoftTrainingSAE,
    ProtoSoftTrainingSAEConfig,
)
from softsae_lens.experiments.synthetic.realistic import (
    RealisticRegime,
    RecordedActivationGenerator,
    build_model,
    sample_true_l0,
    width_features,
    width_l0,
)

TINY = RealisticRegime("tiny", num_features=256, hidden_dim=32)


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(TINY, seed=0)


def test_realistic_regime_is_the_synthsaebench_recipe_scaled_down():
    cfg = RealisticRegime("r", num_features=4096, hidden_dim=256).model_config(seed=3)
    assert cfg.num_features == 4096 and cfg.hidden_dim == 256 and cfg.seed == 3
    assert cfg.firing_probability == ZipfianFiringProbabilityConfig(
        exponent=0.5, max_prob=0.4, min_prob=5e-4
    )
    assert cfg.hierarchy == HierarchyConfig(
        total_root_nodes=32,  # 128 roots per 16,384 features
        branching_factor=4,
        max_depth=3,
        mutually_exclusive_portion=1.0,
        compensate_probabilities=True,
        scale_children_by_parent=True,
    )
    assert cfg.correlation == LowRankCorrelationConfig(rank=25, correlation_scale=0.1)
    assert cfg.std_firing_magnitudes == FoldedNormalMagnitudeConfig(mean=0.5, std=0.5)
    assert RealisticRegime("r", 4096, 256).d_sae == 1024
    with pytest.raises(ValueError, match="num_features"):
        RealisticRegime("r", num_features=64, hidden_dim=8)
    with pytest.raises(ValueError, match="width_fraction"):
        RealisticRegime("r", 256, 32, width_fraction=0.0)


def test_children_fire_only_with_their_parent_and_exclusively(tiny_model):
    torch.manual_seed(0)
    active = tiny_model.activation_generator.sample(4000) != 0
    depth, parent = hierarchy_tables(tiny_model.hierarchy.roots, TINY.num_features)
    assert int((depth == 0).sum()) == TINY.roots == 2
    children = (parent >= 0).nonzero().squeeze(-1)
    assert children.numel() == 2 * (4 + 16 + 64)
    # A child is active only when its parent is.
    assert not bool((active[:, children] & ~active[:, parent[children]]).any())
    # Mutually exclusive siblings: at most one child of each parent at a time.
    for p in parent[children].unique()[:10]:
        kids = (parent == p).nonzero().squeeze(-1)
        assert int(active[:, kids].sum(-1).max()) <= 1


def test_width_l0_counts_the_most_frequent_features():
    frequencies = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.2], dtype=torch.float64)
    assert width_features(frequencies, 2).tolist() == [1, 3]
    assert width_l0(frequencies, 2) == pytest.approx(0.8)
    assert width_l0(frequencies, 5) == pytest.approx(float(frequencies.sum()))


def test_measured_frequencies_match_the_true_l0(tiny_model):
    true_l0, frequencies = sample_true_l0(tiny_model, 5000, seed=1, batch=1024)
    assert true_l0.shape == (5000,)
    assert float(frequencies.sum()) == pytest.approx(float(true_l0.double().mean()), rel=1e-9)
    # Zipfian firing: the most frequent features fire far more often than the rarest.
    assert width_l0(frequencies, TINY.d_sae) > 0.5 * float(true_l0.double().mean())


def test_recorded_stream_replays_the_generators_batches(tiny_model):
    source = tiny_model.activation_generator
    torch.manual_seed(7)
    expected = [source.sample(64) for _ in range(3)]
    torch.manual_seed(7)
    stream = RecordedActivationGenerator(source).record(3, 64)
    for _ in range(2):  # every SAE sees the very same batches after a rewind
        stream.rewind()
        for batch in expected:
            assert torch.equal(stream(64), batch)
    with pytest.raises(RuntimeError, match="all 3 recorded batches"):
        stream.sample(64)
    stream.rewind()
    with pytest.raises(ValueError, match="batch_size must be the recorded 64"):
        stream.sample(32)


def _tree() -> list[HierarchyNode]:
    """Feature 0 with mutually exclusive children 1 and 2; feature 3 outside any tree."""
    return [
        HierarchyNode(0, [HierarchyNode(1), HierarchyNode(2)], mutually_exclusive_children=True)
    ]


def test_hierarchy_tables_give_depth_and_parent():
    depth, parent = hierarchy_tables(_tree(), 4)
    assert depth.tolist() == [0, 1, 1, -1]
    assert parent.tolist() == [-1, 0, 0, -1]


def _inputs() -> torch.Tensor:
    # Parent alone, parent with child 1, parent with child 2, feature 3 alone; 5 times each.
    rows = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]]
    return torch.tensor(rows * 5, dtype=torch.float32)


def test_hierarchy_diagnostics_of_a_perfect_sae():
    gt = torch.eye(4, 8)
    feats = _inputs()
    d = hierarchy_diagnostics(gt, gt, feats, feats, _tree(), width=torch.arange(4))
    for group in ("within_width", "depth_0", "depth_1", "outside_hierarchy"):
        assert d["groups"][group]["f1"] == pytest.approx(1.0), group
        assert d["groups"][group]["learned"] == pytest.approx(1.0), group
    assert d["absorption"] == {
        "parents": 1,
        "parent_recall_with_child": 1.0,
        "parent_recall_alone": 1.0,
    }
    assert d["features_split"] == 0
    assert d["child_latent_cosine_with_parent"] == pytest.approx(0.0)


def test_hierarchy_diagnostics_see_absorption_and_splitting():
    gt = torch.eye(4, 8)
    feats = _inputs()
    latents = feats.clone()
    # The parent's latent stays silent whenever a child is active (the child absorbed it), and
    # the children's latents lean towards the parent's direction.
    latents[feats[:, 1:3].sum(-1) > 0, 0] = 0
    decoder = gt.clone()
    decoder[1:3, 0] = 0.5
    split = torch.cat([decoder, decoder[3:4]])  # a second latent on feature 3
    latents = torch.cat([latents, latents[:, 3:4]], dim=1)
    d = hierarchy_diagnostics(split, gt, latents, feats, _tree(), width=torch.arange(4))
    assert d["absorption"]["parent_recall_alone"] == pytest.approx(1.0)
    assert d["absorption"]["parent_recall_with_child"] == pytest.approx(0.0)
    assert d["child_latent_cosine_with_parent"] == pytest.approx(0.5 / 1.25**0.5)
    assert d["features_split"] == 1 and d["latents_on_split_features"] == 2
    assert d["groups"]["depth_0"]["recall"] == pytest.approx(1 / 3)


def _proto(train_code: str, **kwargs) -> ProtoSoftTrainingSAE:
    torch.manual_seed(0)
    cfg = ProtoSoftTrainingSAEConfig(
        d_in=16, d_sae=64, k=4, total_training_steps=100, train_code=train_code, **kwargs
    )
    return ProtoSoftTrainingSAE(cfg)


def _step(sae: ProtoSoftTrainingSAE, x: torch.Tensor, step: int = 50):
    return sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=step,
            is_logging_step=False,
        )
    )


def test_straight_through_trains_on_the_inference_code_and_still_moves_k():
    sae = _proto("straight_through")
    x = torch.randn(32, 16)
    out = _step(sae, x)
    # The forward pass is exactly what inference computes: hard top-round(k_hat).
    with torch.no_grad():
        assert torch.allclose(out.sae_out, sae.decode(sae.encode(x)), atol=1e-6)
        assert torch.equal(out.feature_acts, sae.encode(x))
    out.loss.backward()
    assert sae.W_k_out.grad is not None and sae.W_k_out.grad.abs().sum() > 0
    # The encoder learns only through the selected latents, as in TopK.
    unselected = (out.feature_acts == 0).all(dim=0)
    assert unselected.any()
    assert torch.all(sae.W_enc.grad[:, unselected] == 0)


def test_straight_through_differs_from_the_soft_code_and_validates():
    x = torch.randn(32, 16)
    soft, straight = _proto("soft"), _proto("straight_through")
    straight.load_state_dict(soft.state_dict())
    # Early in the run (alpha large) the soft code is far from the hard one.
    assert not torch.allclose(_step(soft, x, 0).sae_out, _step(straight, x, 0).sae_out)
    with pytest.raises(ValueError, match="train_code must be"):
        _proto("hardest")


def test_realistic_orthogonalize_reaches_sae_lens_config_and_the_stream_cache_key():
    from softsae_lens.experiments.synthetic.realistic import RealisticRegime

    plain = RealisticRegime("realistic", num_features=256, hidden_dim=32)
    ortho = RealisticRegime("realistic", num_features=256, hidden_dim=32, orthogonalize=True)
    assert plain.model_config(0).orthogonalization is None
    assert ortho.model_config(0).orthogonalization is not None
    assert "orthogonalised" in ortho.describe() and "orthogonalised" not in plain.describe()
