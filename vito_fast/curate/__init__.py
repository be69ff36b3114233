"""Curation: pick videos whose metadata names an ImageNet class, balanced per class (VideoNet-style).

Holds the vocabulary of class synonyms (``vocabulary``, ``resources/``), the metadata readers
(``metadata``), the three-pass selection (``selection``), its counts (``summary``) and the report
(``report``). May import: ``vito_fast.errors`` and the lower layers; nothing above (train, eval,
demo, cli).
"""
from vito_fast._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CurateConfig": ".selection",
        "curate": ".selection",
        "read_curated": ".selection",
        "expand_curated_lists": ".selection",
        "CurationSummary": ".summary",
        "DROP_REASONS": ".summary",
        "Vocabulary": ".vocabulary",
        "load_vocabulary": ".vocabulary",
    },
)
