"""Linear probe on frozen features: a softmax classifier, trained deterministically.

The probe standardises features with the training set's mean and standard deviation, then fits
``logits = W · (x − μ) / σ + b`` by minimising ``cross_entropy + weight_decay · ‖W‖²``, either
full-batch with L-BFGS (default; the problem is convex, the result does not depend on a seed) or
with mini-batch SGD (momentum 0.9, cosine learning rate, shuffled by ``seed``). Weights start at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class LinearProbe:
    """A trained probe: ``predict(features (M, D)) -> logits (M, num_classes)``."""

    weight: torch.Tensor  # (num_classes, D)
    bias: torch.Tensor  # (num_classes,)
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features.float().to(self.mean.device) - self.mean) / self.std
        return standardised @ self.weight.T + self.bias

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy in [0, 1]."""
        predictions = self.predict(features).argmax(dim=1).cpu()
        return float((predictions == labels.long().cpu()).float().mean())


def train_linear_probe(features: torch.Tensor, labels: torch.Tensor, *, num_classes: Optional[int] = None,
                       method: str = "lbfgs", weight_decay: float = 1e-4, max_iterations: int = 200,
                       epochs: int = 100, batch_size: int = 256, learning_rate: float = 0.1,
                       seed: int = 0) -> LinearProbe:
    """Fit a probe on features (N, D) with labels (N,) in [0, num_classes).

    ``method="lbfgs"``: full batch, ``max_iterations`` L-BFGS steps (strong-Wolfe line search).
    ``method="sgd"``: ``epochs`` passes of mini-batches of ``batch_size``.
    """
    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"train_linear_probe: features {tuple(features.shape)} and labels {tuple(labels.shape)} "
                         "must be (N, D) and (N,)")
    if method not in ("lbfgs", "sgd"):
        raise ValueError(f"train_linear_probe: method must be 'lbfgs' or 'sgd', not {method!r}")
    features = features.float()
    labels = labels.long().to(features.device)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    inputs = (features - mean) / std
    weight = torch.zeros(num_classes, features.shape[1], device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=features.device, requires_grad=True)

    def objective(batch_inputs: torch.Tensor, batch_labels: torch.Tensor) -> torch.Tensor:
        logits = batch_inputs @ weight.T + bias
        return F.cross_entropy(logits, batch_labels) + weight_decay * weight.pow(2).sum()

    with torch.enable_grad():
        if method == "lbfgs":
            optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                          line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                loss = objective(inputs, labels)
                loss.backward()
                return loss

            optimizer.step(closure)
        else:
            optimizer = torch.optim.SGD([weight, bias], lr=learning_rate, momentum=0.9)
            generator = torch.Generator().manual_seed(seed)
            steps_per_epoch = math.ceil(len(inputs) / batch_size)
            total_steps, step = epochs * steps_per_epoch, 0
            for _ in range(epochs):
                order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
                for start in range(0, len(inputs), batch_size):
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                    chosen = order[start:start + batch_size]
                    optimizer.zero_grad()
                    objective(inputs[chosen], labels[chosen]).backward()
                    optimizer.step()
                    step += 1
    return LinearProbe(weight.detach(), bias.detach(), mean, std)


def linear_probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                          test_labels: torch.Tensor, **probe_options) -> float:
    """Train a probe on the train split and return its top-1 accuracy in [0, 1] on the test split."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = train_linear_probe(train_features, train_labels, num_classes=num_classes, **probe_options)
    return probe.accuracy(test_features, test_labels)
