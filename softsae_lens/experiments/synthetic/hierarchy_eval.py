"""Where an SAE's features go wrong on hierarchical ground truth.

SAELens's synthetic evals give one number per SAE (MCC, F1, uniqueness). On a
:class:`~sae_lens.synthetic.SyntheticModel` with a hierarchy these break that down:

* per hierarchy depth (roots, their children, ..., and the features outside any tree) and for
  the features a ``d_sae``-wide SAE can hold (the most frequent) against the rest: how well
  each true feature is represented (cosine of its best-matching decoder row) and detected
  (precision, recall, F1 of that latent as a detector of the feature);
* absorption: a parent's latent that stops firing when one of the parent's children is active,
  because the child's latent has absorbed the parent's direction (recall of parent latents
  with and without an active child, and the cosine of child latents with their parent);
* splitting: true features claimed by more than one latent.

Depends on torch and SAELens's hierarchy nodes only: nothing about training or reports.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.synthetic.hierarchy import HierarchyNode

# A true feature counts as learned when some decoder row has at least this cosine with it.
LEARNED_COSINE = 0.5


def hierarchy_tables(
    roots: list[HierarchyNode] | None, num_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature: its depth in the hierarchy (-1 outside any tree) and its parent (-1 none)."""
    depth = torch.full((num_features,), -1, dtype=torch.long)
    parent = torch.full((num_features,), -1, dtype=torch.long)
    stack = [(node, 0, -1) for node in roots or []]
    while stack:
        node, d, p = stack.pop()
        index = node.feature_index if node.feature_index is not None else p
        if node.feature_index is not None:
            depth[index], parent[index] = d, p
        stack.extend((child, d + 1, index) for child in node.children)
    return depth, parent


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _detector_stats(fires: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per column: precision, recall and F1 of ``fires`` as a detector of ``truth`` (bools)."""
    tp = (fires & truth).sum(0).double()
    precision = tp / fires.sum(0).double().clamp_min(1)
    recall = tp / truth.sum(0).double().clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}


def _group_means(values: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float | int]:
    out: dict[str, float | int] = {"features": int(mask.sum())}
    for name, v in values.items():
        out[name] = float(v[mask].double().mean()) if bool(mask.any()) else float("nan")
    return out


@torch.no_grad()
def hierarchy_diagnostics(
    decoder: torch.Tensor,
    gt_vectors: torch.Tensor,
    latents: torch.Tensor,
    features: torch.Tensor,
    roots: list[HierarchyNode] | None,
    width: torch.Tensor,
) -> dict[str, Any]:
    """Diagnostics of one SAE against the ground truth.

    Args:
        decoder: ``[d_sae, d_in]`` decoder rows of the (inference) SAE.
        gt_vectors: ``[num_features, d_in]`` true feature directions.
        latents: ``[n, d_sae]`` SAE activations on ``n`` inputs.
        features: ``[n, num_features]`` the inputs' true feature activations.
        roots: the hierarchy's root nodes (None: no hierarchy).
        width: indices of the ``d_sae`` most frequent true features.
    """
    num_features = gt_vectors.shape[0]
    cos = _unit_rows(gt_vectors.float()) @ _unit_rows(decoder.float()).T  # [features, latents]
    best_cos, best_latent = cos.max(dim=1)
    fires, truth = latents != 0, features != 0
    detect = _detector_stats(fires[:, best_latent], truth)
    values = {"best_cosine": best_cos, "learned": (best_cos >= LEARNED_COSINE).double(), **detect}
    depth, parent = hierarchy_tables(roots, num_features)
    in_width = torch.zeros(num_features, dtype=torch.bool)
    in_width[width] = True
    groups: dict[str, Any] = {
        "within_width": _group_means(values, in_width),
        "beyond_width": _group_means(values, ~in_width),
        "outside_hierarchy": _group_means(values, depth < 0),
    }
    for d in range(int(depth.max()) + 1 if bool((depth >= 0).any()) else 0):
        groups[f"depth_{d}"] = _group_means(values, depth == d)
    out: dict[str, Any] = {"groups": groups}

    # Splitting: latents whose best true feature is shared with another latent.
    latent_best = cos.argmax(dim=0)
    claimed = torch.bincount(latent_best, minlength=num_features)
    out["features_split"] = int((claimed > 1).sum())
    out["latents_on_split_features"] = int(claimed[claimed > 1].sum())

    # Absorption, over learned parents within the width that have children.
    has_child = torch.zeros(num_features, dtype=torch.bool)
    children = parent >= 0
    has_child[parent[children]] = True
    child_active = torch.zeros_like(truth)
    child_index = children.nonzero().squeeze(-1)
    child_active.index_add_(1, parent[child_index], truth[:, child_index].to(truth.dtype))
    chosen = has_child & in_width & (best_cos >= LEARNED_COSINE)
    parents = chosen.nonzero().squeeze(-1)
    if parents.numel():
        parent_fires = fires[:, best_latent[parents]]
        on = truth[:, parents]
        with_child, alone = on & child_active[:, parents], on & ~child_active[:, parents]
        recall_with = (parent_fires & with_child).sum(0).double() / with_child.sum(0).clamp_min(1)
        recall_alone = (parent_fires & alone).sum(0).double() / alone.sum(0).clamp_min(1)
        keep = (with_child.sum(0) > 0) & (alone.sum(0) > 0)
        out["absorption"] = {
            "parents": int(keep.sum()),
            "parent_recall_with_child": float(recall_with[keep].mean()),
            "parent_recall_alone": float(recall_alone[keep].mean()),
        }
    # Children's latents leaning towards their parent's direction (the parent absorbed).
    kids = child_index[in_width[child_index] & (best_cos[child_index] >= LEARNED_COSINE)]
    if kids.numel():
        kid_rows = _unit_rows(decoder.float())[best_latent[kids]]
        parent_dirs = _unit_rows(gt_vectors.float())[parent[kids]]
        out["child_latent_cosine_with_parent"] = float((kid_rows * parent_dirs).sum(-1).mean())
    return out
