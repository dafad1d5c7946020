"""Autoencoder head on text features: encoder -> code -> decoder.

Two uses:

* auxiliary loss: a model that consumes ``ae.encode(x)`` adds ``aux_loss(ae, x, weight)``
  to its recommendation loss, so the code keeps what is needed to rebuild the text vector;
* standalone compression: ``compress(vectors, code_dim=64)`` trains an AE on the vectors
  alone and returns the codes (e.g. 384-d MiniLM -> 64-d) plus the fitted module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metarec.types import MetarecError


class AutoEncoder(nn.Module):
    """in_dim -> hidden -> code_dim -> hidden -> in_dim, GELU between layers, linear code."""

    def __init__(self, in_dim: int, hidden: int, code_dim: int) -> None:
        super().__init__()
        if min(in_dim, hidden, code_dim) < 1:
            raise MetarecError(
                f"AutoEncoder: sizes must be >= 1, got in={in_dim} hidden={hidden} code={code_dim}"
            )
        self.in_dim, self.hidden, self.code_dim = in_dim, hidden, code_dim
        f32 = {"dtype": torch.float32}  # the text vectors are float32 whatever torch's default
        self.encoder = nn.Sequential(
            nn.Linear(in_dim, hidden, **f32), nn.GELU(), nn.Linear(hidden, code_dim, **f32)
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim, hidden, **f32), nn.GELU(), nn.Linear(hidden, in_dim, **f32)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., code_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(..., code_dim) -> (..., in_dim)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the reconstruction, averaged over rows and features."""
        return torch.mean((self(x) - x) ** 2)


def aux_loss(ae: AutoEncoder, x: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight * reconstruction_loss(x)``: add it to the recommendation loss."""
    return weight * ae.reconstruction_loss(x)


def train_autoencoder(
    ae: AutoEncoder,
    vectors: np.ndarray | torch.Tensor,
    epochs: int = 100,
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> list[float]:
    """Adam on the reconstruction loss; returns the mean training loss of each epoch."""
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != ae.in_dim:
        raise MetarecError(
            f"autoencoder: vectors have shape {tuple(x.shape)}, expected (n, {ae.in_dim})"
        )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    history = []
    ae.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            batch = x[order[start : start + batch_size]]
            loss = ae.reconstruction_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        history.append(total / len(x))
    ae.eval()
    return history


def compress(
    vectors: np.ndarray,
    code_dim: int = 64,
    epochs: int = 100,
    seed: int = 0,
    hidden: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 256,
) -> tuple[np.ndarray, AutoEncoder]:
    """Train an AE on ``vectors`` (n, d) and return (codes (n, code_dim) float32, ae).

    hidden defaults to the mean of d and code_dim. Seeded: same inputs, same codes.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise MetarecError(f"compress: need a non-empty (n, d) array, got shape {vectors.shape}")
    d = vectors.shape[1]
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        ae = AutoEncoder(d, hidden or (d + code_dim) // 2, code_dim)
    train_autoencoder(ae, vectors, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    with torch.no_grad():
        codes = ae.encode(torch.from_numpy(vectors)).numpy().astype(np.float32)
    return codes, ae
