"""Thin ``torch.nn.Module`` wrappers around the fused ops. May import ops, reference, distributed."""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "InfoNCE": ".info_nce",
        "AttentionPool2d": ".attention_pool",
    },
)
