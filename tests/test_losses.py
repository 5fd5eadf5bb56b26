"""Losses: every registered loss builds and backpropagates; each one against a computation by hand."""
from __future__ import annotations

import datetime
import itertools
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml
from torch import nn

from core.errors import ConfigError
from core.schema import LossConfig
from losses import LOSSES, build_criterion

DIM, CLASSES = 8, 4
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


class PairModel(nn.Module):
    """Stands for the Siamese model: only its pair head matters to the contrastive loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(2 * DIM, 1)

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([(a - b).abs(), a * b], dim=1)).squeeze(1)


def make_outputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "embedding": torch.randn(8, DIM, generator=g).requires_grad_(),
        "logits": torch.randn(8, CLASSES, generator=g).requires_grad_(),
        "features": [torch.randn(8, 5, 3, 3, generator=g).requires_grad_(), torch.randn(8, 6, 2, 2, generator=g).requires_grad_()],
    }


def criterion(name: str, **args):
    return build_criterion([{"name": name, "args": args}], embed_dim=DIM, num_classes=CLASSES)


def loss_of(name: str, outputs: dict, model=None, **args) -> torch.Tensor:
    total, parts = criterion(name, **args)(outputs, LABELS, model)
    assert parts[name] == pytest.approx(total.item())
    return total


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_builds_and_backpropagates(name):
    outputs = make_outputs()
    total, parts = build_criterion([LossConfig(name=name)], embed_dim=DIM, num_classes=CLASSES)(outputs, LABELS, PairModel())
    total.backward()
    assert torch.isfinite(total) and total.item() > 0 and set(parts) == {name}
    grads = [outputs["embedding"].grad, outputs["logits"].grad, *(f.grad for f in outputs["features"])]
    used = [g for g in grads if g is not None]
    assert used and all(torch.isfinite(g).all() for g in used) and any(g.abs().sum() > 0 for g in used)


def margin_softmax_by_hand(embedding, centres, target_logit, scale, sub_centers=1):
    cosine = F.normalize(embedding, dim=1) @ F.normalize(centres, dim=0)
    cosine = cosine.view(len(embedding), CLASSES, sub_centers).max(dim=2).values
    logits = cosine.clone()
    rows = torch.arange(len(LABELS))
    logits[rows, LABELS] = target_logit(cosine[rows, LABELS])
    return F.cross_entropy(scale * logits, LABELS)


def test_arcface_margin_is_in_radians():
    outputs = make_outputs()
    crit = criterion("arcface", margin=0.5, scale=30.0)
    centres = crit.terms[0].loss.W
    assert crit.terms[0].loss.margin == pytest.approx(0.5)  # PML keeps radians after its degrees input
    angles = torch.acos(F.normalize(outputs["embedding"], dim=1) @ F.normalize(centres, dim=0))
    assert (angles < math.pi - 0.5).all()  # the plain cos(theta + m) branch applies to this batch
    expected = margin_softmax_by_hand(outputs["embedding"], centres, lambda c: torch.cos(torch.acos(c) + 0.5), 30.0)
    assert torch.allclose(crit(outputs, LABELS)[0], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="radians"):
        criterion("arcface", margin=28.6)


def test_subcenter_arcface_by_hand():
    outputs = make_outputs()
    crit = criterion("subcenter_arcface", margin=0.3, scale=20.0, sub_centers=2)
    centres = crit.terms[0].loss.W
    assert centres.shape == (DIM, CLASSES * 2)
    expected = margin_softmax_by_hand(outputs["embedding"], centres, lambda c: torch.cos(torch.acos(c) + 0.3), 20.0, 2)
    assert torch.allclose(crit(outputs, LABELS)[0], expected, atol=1e-5)


def test_cosface_by_hand():
    outputs = make_outputs()
    crit = criterion("cosface", margin=0.35, scale=30.0)
    expected = margin_softmax_by_hand(outputs["embedding"], crit.terms[0].loss.W, lambda c: c - 0.35, 30.0)
    assert torch.allclose(crit(outputs, LABELS)[0], expected, atol=1e-5)


def triplet_by_hand(embedding, miner, margin, distance):
    unit = F.normalize(embedding.detach(), dim=1).double()
    n = len(unit)
    if distance == "euclidean":
        gap = torch.cdist(unit, unit)  # smaller = closer
    else:
        gap = -(unit @ unit.T)  # negated similarity: smaller = closer, the margin applies the same way
    same = [[bool(LABELS[i] == LABELS[j]) for j in range(n)] for i in range(n)]
    triplets = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and same[a][p]]
        negatives = [q for q in range(n) if not same[a][q]]
        if miner == "batch_hard":
            p = max(positives, key=lambda j: gap[a, j])
            q = min(negatives, key=lambda j: gap[a, j])
            triplets.append((a, p, q))
        else:
            for p, q in itertools.product(positives, negatives):
                if miner == "all" or 0 < gap[a, q] - gap[a, p] <= margin:
                    triplets.append((a, p, q))
    losses = [max(float(gap[a, p] - gap[a, q]) + margin, 0.0) for a, p, q in triplets]
    nonzero = [v for v in losses if v > 0]
    return sum(nonzero) / len(nonzero) if nonzero else 0.0


@pytest.mark.parametrize(
    "miner, distance", [("batch_hard", "euclidean"), ("batch_hard", "cosine"), ("semi_hard", "euclidean"), ("all", "euclidean")]
)
def test_triplet_by_hand(miner, distance):
    outputs = make_outputs(seed=1)
    margin = 0.3
    value = loss_of("triplet", outputs, margin=margin, miner=miner, distance=distance)
    assert value.item() == pytest.approx(triplet_by_hand(outputs["embedding"], miner, margin, distance), abs=1e-5)
    assert value.item() > 0


def test_cross_entropy_with_label_smoothing_by_hand():
    outputs = make_outputs()
    log_p = torch.log_softmax(outputs["logits"].detach(), dim=1)
    eps = 0.1
    per_sample = [(1 - eps) * -log_p[i, LABELS[i]] + eps * -log_p[i].mean() for i in range(len(LABELS))]
    expected = torch.stack(per_sample).mean()
    assert torch.allclose(loss_of("cross_entropy", outputs, label_smoothing=eps), expected, atol=1e-6)


def test_feature_similarity_by_hand():
    outputs = make_outputs()
    expected = 0.0
    for fmap in outputs["features"]:
        h = fmap.detach().mean(dim=(2, 3))
        n = len(h)
        squared = 0.0
        for i in range(n):
            for j in range(n):
                cos = float(h[i] @ h[j] / (h[i].norm() * h[j].norm()))
                target = 1.0 if LABELS[i] == LABELS[j] else 0.0
                squared += (cos - target) ** 2
        expected += squared / (n * n)
    assert loss_of("feature_similarity", outputs).item() == pytest.approx(expected, abs=1e-5)


def contrastive_by_hand(embedding, model, negatives):
    e = embedding.detach()
    n = len(e)
    positives = [(i, j) for i in range(n) for j in range(i + 1, n) if LABELS[i] == LABELS[j]]
    if negatives == "all":
        negative_pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if LABELS[i] != LABELS[j]]
    else:
        unit = F.normalize(e, dim=1)
        negative_pairs = [
            (i, max((j for j in range(n) if LABELS[j] != LABELS[i]), key=lambda j: float(unit[i] @ unit[j])))
            for i in range(n)
        ]

    def mean_bce(pairs, same):
        with torch.no_grad():
            values = []
            for i, j in pairs:
                p = torch.sigmoid(model.pair_logits(e[i : i + 1], e[j : j + 1]))[0]
                values.append(-math.log(p) if same else -math.log(1 - p))
        return sum(values) / len(values)

    return (mean_bce(positives, True) + mean_bce(negative_pairs, False)) / 2


@pytest.mark.parametrize("negatives", ["hard", "all"])
def test_contrastive_pair_loss_by_hand(negatives):
    outputs, model = make_outputs(), PairModel()
    value = loss_of("contrastive", outputs, model, negatives=negatives)
    assert value.item() == pytest.approx(contrastive_by_hand(outputs["embedding"], model, negatives), abs=1e-5)

    with_embedding_loss = loss_of("contrastive", outputs, model, negatives=negatives, embedding_weight=0.5)
    extra = pml.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)(outputs["embedding"].detach(), LABELS)
    assert with_embedding_loss.item() == pytest.approx(value.item() + 0.5 * extra.item(), abs=1e-5)


def test_weighted_sum_names_and_parameters():
    outputs = make_outputs()
    crit = build_criterion(
        [
            {"name": "arcface", "weight": 0.5},
            {"name": "triplet", "weight": 2.0},
            {"name": "triplet", "weight": 1.0, "args": {"miner": "all"}},
        ],
        embed_dim=DIM,
        num_classes=CLASSES,
    )
    total, parts = crit(outputs, LABELS)
    assert list(parts) == ["arcface", "triplet", "triplet_2"]
    assert total.item() == pytest.approx(0.5 * parts["arcface"] + 2.0 * parts["triplet"] + parts["triplet_2"], rel=1e-6)
    # The class centres are what the optimizer must add (with its own learning rate).
    assert [p.shape for p in crit.parameters()] == [(DIM, CLASSES)]


def test_losses_run_in_float32_under_autocast():
    outputs = {k: v.detach().to(torch.bfloat16) if torch.is_tensor(v) else v for k, v in make_outputs().items()}
    crit = criterion("arcface")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = crit(outputs, LABELS)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert crit.terms[0].loss.W.dtype == torch.float32


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown loss 'arcfce'; did you mean 'arcface'"):
        criterion("arcfce")
    with pytest.raises(ConfigError, match="did you mean 'margin'"):
        criterion("triplet", margn=0.1)
    with pytest.raises(ConfigError, match="did you mean 'semi_hard'"):
        criterion("triplet", miner="semihard")
    with pytest.raises(ConfigError, match="unknown config key 'losses\\[0\\].wieght'"):
        build_criterion([{"name": "triplet", "wieght": 1}], embed_dim=DIM, num_classes=CLASSES)
    with pytest.raises(ConfigError, match="empty"):
        build_criterion([], embed_dim=DIM, num_classes=CLASSES)
    outputs = make_outputs()
    with pytest.raises(ConfigError, match="'logits'.*classifier"):
        criterion("cross_entropy")({"embedding": outputs["embedding"]}, LABELS)
    with pytest.raises(ConfigError, match="feature_layers"):
        criterion("feature_similarity")({"embedding": outputs["embedding"], "features": []}, LABELS)
    with pytest.raises(ConfigError, match="siamese"):
        criterion("contrastive")(outputs, LABELS, nn.Linear(2, 2))


# --- two gloo processes: pair and triplet losses see the other process's samples ----------------------

DISTRIBUTED_LOSSES = ("triplet", "contrastive", "feature_similarity")


def global_batch():
    """16 samples; process r holds rows 8r..8r+7, so each process alone sees only half the identities."""
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(8).repeat_interleave(2)
    return torch.randn(16, DIM, generator=g), [torch.randn(16, 5, 3, 3, generator=g)], labels


def run_loss(name, embedding, features, labels, distributed):
    """(loss value, gradient of the input the loss uses)."""
    embedding = embedding.clone().requires_grad_()
    features = [f.clone().requires_grad_() for f in features]
    crit = build_criterion([{"name": name}], embed_dim=DIM, num_classes=8, distributed=distributed)
    total, _ = crit({"embedding": embedding, "features": features}, labels, PairModel())
    total.backward()
    grad = features[0].grad if name == "feature_similarity" else embedding.grad
    return total.detach(), grad


def _distributed_worker(rank, world, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        embedding, features, labels = global_batch()
        rows = slice(8 * rank, 8 * rank + 8)
        results = {name: run_loss(name, embedding[rows], [f[rows] for f in features], labels[rows], True) for name in DISTRIBUTED_LOSSES}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_losses_see_the_global_batch(tmp_path):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    embedding, features, labels = global_batch()
    for name in DISTRIBUTED_LOSSES:
        value, grad = run_loss(name, embedding, features, labels, False)
        local_value, _ = run_loss(name, embedding[:8], [f[:8] for f in features], labels[:8], False)
        assert not torch.allclose(local_value, value)  # the other half changes the loss...
        for rank in range(2):
            rank_value, rank_grad = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[name]
            assert torch.allclose(rank_value, value, atol=1e-6), name  # ...and each process computes it whole
            # Scaled by the process count so that DDP's gradient averaging gives the one-process gradient.
            assert torch.allclose(rank_grad, 2 * grad[8 * rank : 8 * rank + 8], atol=1e-6), name
