"""Feature vectors for users and items: the model's view of φ(u, c)'s inputs.

A :class:`FeatureSet` holds per-item and per-user matrices built once per dataset (text
vectors from the pretrained encoder, side features). The per-task part of a user's
representation, the history profile, is computed from the support set by
:func:`history_profile`, so a cold user with K interactions has a content profile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class FeatureSet:
    item_text: torch.Tensor  # (n_items, d_text) float32; zero rows for items without text
    item_side: torch.Tensor  # (n_items, d_item_side) float32; may have 0 columns
    user_side: torch.Tensor  # (n_users, d_user_side) float32; may have 0 columns
    encoder_fingerprint: str = ""

    @property
    def n_items(self) -> int:
        return self.item_text.shape[0]

    @property
    def n_users(self) -> int:
        return self.user_side.shape[0]

    def to(self, device: torch.device | str) -> FeatureSet:
        return FeatureSet(
            self.item_text.to(device),
            self.item_side.to(device),
            self.user_side.to(device),
            self.encoder_fingerprint,
        )


def history_profile(
    item_text: torch.Tensor,
    support_items: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Weighted mean of the text vectors of each task's support items.

    item_text: (n_items, d); support_items: (..., K) int64; weights, mask: (..., K) float.
    Returns (..., d). Padded slots (mask 0) and empty supports contribute nothing (the
    profile of an empty support is the zero vector, not NaN).
    """
    w = weights * mask  # (..., K)
    vecs = item_text[support_items]  # (..., K, d)
    denom = w.sum(-1, keepdim=True).clamp_min(1e-8)  # (..., 1)
    return (w.unsqueeze(-1) * vecs).sum(-2) / denom
