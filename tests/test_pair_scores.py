"""The Siamese pair head on extracted embeddings: shape, batching, and the numbers the pair loss trains."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import IMAGE_MODELS
from torch.utils.data import TensorDataset

from engine.extraction import extract_embeddings
from losses.pair import contrastive, select_pairs
from zoo import TrunkConfig, build_model
from zoo.siamese import Siamese

EMBED_DIM = 8


@pytest.fixture(scope="module")
def siamese() -> Siamese:
    torch.manual_seed(0)
    return Siamese(0, TrunkConfig(backbone="test_resnet"), embed_dim=EMBED_DIM, pair_hidden=16).eval()


def images(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_only_the_siamese_model_has_a_pair_head():
    flags = {name: build_model({"name": name, "args": {"backbone": "test_resnet"}}, num_classes=2).has_pair_head
             for name in IMAGE_MODELS}
    assert flags == {"classifier": False, "embedder": False, "features": False, "miewid": False,
                     "siamese": True}
    # The fusion model has one when it is given a size (tests/test_fusion.py trains it).
    member = {"spec": "m", "checksum": "0" * 64, "dim": 8, "input_size": 32}
    assert [build_model({"name": "fusion", "args": {"members": [member], "pca_dims": [4], "pair_hidden": hidden}},
                        num_classes=0).has_pair_head for hidden in (0, 8)] == [False, True]


def test_pair_scores_shape_batching_and_inputs(siamese):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 37, EMBED_DIM)).astype(np.float32)
    scores = siamese.pair_scores(a, b)
    assert scores.shape == (37,) and scores.dtype == np.float32
    np.testing.assert_allclose(siamese.pair_scores(a, b, batch_size=5), scores, atol=1e-6)
    np.testing.assert_array_equal(siamese.pair_scores(torch.from_numpy(a), torch.from_numpy(b)), scores)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(siamese.pair_scores(unit, b), scores, atol=1e-6)  # raw or normalised alike
    assert siamese.pair_scores(a[:0], b[:0]).shape == (0,)
    with pytest.raises(ValueError, match=f"two \\(N, {EMBED_DIM}\\) embedding arrays"):
        siamese.pair_scores(a, b[:, :4])


def test_pair_scores_equal_what_the_pair_loss_sees(siamese):
    with torch.no_grad():
        embedding = siamese(images())["embedding"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        loss = contrastive(embed_dim=EMBED_DIM, num_classes=3)({"embedding": embedding}, labels, siamese)
    positives, negatives = select_pairs(embedding, labels, "hard")
    parts = []
    for pairs, target in ((positives, 1.0), (negatives, 0.0)):
        logits = torch.from_numpy(siamese.pair_scores(embedding[pairs[:, 0]], embedding[pairs[:, 1]]))
        parts.append(F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target)))
    torch.testing.assert_close(torch.stack(parts).mean(), loss)


def test_pair_scores_run_on_extracted_embeddings(siamese):
    batch = images()
    extracted = extract_embeddings(siamese, TensorDataset(batch), batch_size=4, progress=False)
    with torch.no_grad():
        expected = siamese.pair_logits(siamese.embed(batch[:3]), siamese.embed(batch[3:]))
    np.testing.assert_allclose(siamese.pair_scores(extracted[:3], extracted[3:]), expected.numpy(), atol=1e-5)
