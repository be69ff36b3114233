"""Batch norm whose statistics span every rank (``torch.nn.SyncBatchNorm`` where it runs, ours on CPU).

``torch.nn.SyncBatchNorm`` accepts only accelerator tensors, so on CPU (gloo) the statistics are
all-reduced here with autograd-aware collectives: mean and E[x²] over the global batch, biased
variance to normalise and unbiased to update the running buffers, as ``nn.BatchNorm`` does. With
one process (or in eval mode) it is exactly ``nn.BatchNorm``. Parameter and buffer names are
unchanged, so state dicts load into torchvision models.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Σ over ranks of x; the gradient of every rank's share is Σ over ranks of the upstream gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(_BatchNorm):
    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm: expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        x32 = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        moments = torch.cat([x32.sum(dims), (x32 * x32).sum(dims), count])
        moments = _AllReduceSum.apply(moments)  # gradients flow back to every rank's share
        channels = x.shape[1]
        total = moments[-1]
        mean = moments[:channels] / total
        var = (moments[channels: 2 * channels] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: torch.nn.Module, device_type: str) -> torch.nn.Module:
    """Every BatchNorm in module → torch's SyncBatchNorm on accelerators, GlobalBatchNorm on CPU."""
    if device_type != "cpu":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        if module.affine:  # a frozen (EMA target) norm stays frozen
            converted.weight.requires_grad_(module.weight.requires_grad)
            converted.bias.requires_grad_(module.bias.requires_grad)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device_type))
    return module
