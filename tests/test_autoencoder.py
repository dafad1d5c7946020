"""AutoEncoder head: training lowers reconstruction error, codes keep neighbourhoods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.models.autoencoder import AutoEncoder, aux_loss, compress, train_autoencoder
from metarec.types import MetarecError


def _structured_vectors(n: int, seed: int = 0) -> np.ndarray:
    """(n, 384) unit vectors on a 16-d latent: 30 clusters + within-cluster spread, tanh-warped.

    A stand-in for sentence embeddings: high-dimensional, low intrinsic dimension, clustered.
    """
    rng = np.random.default_rng(seed)
    lat = 16
    centres = rng.normal(size=(30, lat))
    z = centres[rng.integers(0, 30, n)] + 0.5 * rng.normal(size=(n, lat))
    mix = np.random.default_rng(99).normal(size=(lat, 384)) / np.sqrt(lat)  # shared by all calls
    x = np.tanh(z @ mix) + 0.05 * rng.normal(size=(n, 384))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _knn(v: np.ndarray, k: int) -> np.ndarray:
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :k]


def test_reconstruction_error_falls_during_training():
    x = _structured_vectors(300)
    torch.manual_seed(0)
    ae = AutoEncoder(384, 128, 32)
    history = train_autoencoder(ae, x, epochs=30, seed=0)
    assert len(history) == 30
    # measured: 6.0e-3 -> 2.6e-4; predicting the mean vector scores 2.5e-3
    baseline = float(((x - x.mean(0)) ** 2).mean())
    assert history[-1] < 0.25 * history[0]
    assert history[-1] < 0.5 * baseline


def test_compressed_codes_keep_held_out_neighbourhoods():
    """AE fitted on 500 vectors, 384 -> 32; 10-NN of 200 *held-out* vectors compared.

    Chance recall@10 is 10/199 = 0.05; measured 0.88 (cosine in code space).
    """
    train, held = _structured_vectors(500, seed=1), _structured_vectors(200, seed=2)
    _, ae = compress(train, code_dim=32, epochs=40, seed=0)
    with torch.no_grad():
        codes = ae.encode(torch.from_numpy(held)).numpy()
    truth, got = _knn(held, 10), _knn(codes, 10)
    recall = np.mean([len(set(truth[i]) & set(got[i])) / 10 for i in range(len(held))])
    assert recall > 0.5  # 10x chance


def test_compress_is_seeded_and_leaves_global_rng_alone():
    x = _structured_vectors(64)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    c1, ae = compress(x, code_dim=8, epochs=3, seed=7)
    after = torch.rand(1)
    c2, _ = compress(x, code_dim=8, epochs=3, seed=7)
    assert c1.shape == (64, 8) and c1.dtype == np.float32
    assert np.array_equal(c1, c2)
    assert torch.equal(before, after)
    assert (ae.in_dim, ae.hidden, ae.code_dim) == (384, 196, 8)


def test_aux_loss_is_weighted_reconstruction_and_trains_the_head():
    torch.manual_seed(0)
    ae = AutoEncoder(6, 4, 2)
    x = torch.randn(5, 6)
    torch.testing.assert_close(aux_loss(ae, x, 0.3), 0.3 * ae.reconstruction_loss(x))
    # reconstruction_loss is the plain MSE of decode(encode(x))
    torch.testing.assert_close(ae.reconstruction_loss(x), torch.mean((ae(x) - x) ** 2))
    # added to a recommendation loss on the codes, both terms reach the encoder
    rec = ae.encode(x).sum()
    (rec + aux_loss(ae, x, 0.5)).backward()
    assert ae.decoder[0].weight.grad.abs().sum() > 0
    ae.zero_grad()
    (ae.encode(x).sum() + aux_loss(ae, x, 0.0)).backward()
    assert ae.decoder[0].weight.grad.abs().sum() == 0  # weight 0: decoder gets nothing


def test_bad_shapes_raise():
    with pytest.raises(MetarecError, match="expected \\(n, 4\\)"):
        train_autoencoder(AutoEncoder(4, 3, 2), np.zeros((3, 5)), epochs=1)
    with pytest.raises(MetarecError, match="non-empty"):
        compress(np.zeros((0, 4)))
    with pytest.raises(MetarecError, match="sizes must be"):
        AutoEncoder(4, 0, 2)
