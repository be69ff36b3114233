"""k-nearest-neighbour classification of frozen features (cosine similarity, weighted votes).

Each test vector votes with its ``k`` most similar training vectors, neighbour j weighing
``exp(cos(x, x_j) / temperature)`` for its class (the weighted kNN of Wu et al. 2018 and DINO)::

    scores[c] = Σ_{j in top-k(x)} exp(cos(x, x_j) / τ) · [y_j == c];   prediction = argmax_c scores[c]
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, *,
                k: int = 20, temperature: float = 0.07, num_classes: Optional[int] = None,
                chunk_size: int = 1024) -> torch.Tensor:
    """Class scores (M, num_classes) of test features (M, D) from train features (N, D), labels (N,).

    ``k`` is clipped to N; ties between classes go to the lower class id (argmax).
    """
    if train_features.dim() != 2 or test_features.dim() != 2:
        raise ValueError(f"knn_predict: features must be (N, D) and (M, D), not {tuple(train_features.shape)} "
                         f"and {tuple(test_features.shape)}")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"knn_predict: train features have {train_features.shape[1]} columns but test features "
                         f"have {test_features.shape[1]}")
    if len(train_labels) != len(train_features):
        raise ValueError(f"knn_predict: {len(train_features)} train features but {len(train_labels)} labels")
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_predict: need k >= 1 and temperature > 0, not k={k}, temperature={temperature}")
    train_labels = train_labels.long().to(train_features.device)
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, len(train_features))
    train = F.normalize(train_features.float(), dim=1)
    scores = []
    for start in range(0, len(test_features), chunk_size):
        test = F.normalize(test_features[start:start + chunk_size].float().to(train.device), dim=1)
        similarity, neighbours = (test @ train.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(test), num_classes, device=test.device)
        votes.scatter_add_(1, train_labels[neighbours], weights)
        scores.append(votes.cpu())
    return torch.cat(scores)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in [0, 1] of weighted kNN (see ``knn_predict``)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_features, train_labels, test_features, k=k, temperature=temperature,
                         num_classes=num_classes)
    return float((scores.argmax(dim=1) == test_labels.long().cpu()).float().mean())
