"""vito_fast: fast VITO-style self-supervised pretraining of image encoders on video.

Public API (each name is imported on first use, so ``import vito_fast`` needs neither a GPU,
Triton nor DALI):

- ``vito_fast.info_nce``        fused InfoNCE loss (Triton on CUDA, PyTorch reference elsewhere)
- ``vito_fast.attention_pool``  fused contrastive attention pooling, returns (pooled, attention)
- ``vito_fast.nn``              modules: ``InfoNCE``, ``AttentionPool2d``
- ``vito_fast.data``            view sampler, manifests, frame store, loaders
"""
from vito_fast._lazy import lazy_exports
from vito_fast.version import __version__

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "info_nce": ".ops.info_nce",
        "attention_pool": ".ops.attention_pool",
        "nn": ".nn",
        "data": ".data",
        "kernels": ".kernels",
    },
)

__all__ = ["__version__", "info_nce", "attention_pool", "nn", "data"]
