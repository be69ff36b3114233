"""What a curation run counted: rows dropped per reason, per-class tallies, example rows.

Kept apart from the curation itself so that the report (``report.py``) and the run
(``selection.py``) both depend on it and not on each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from vito_fast.curate.metadata import MalformedRow

# Why a row was left out, in the order the filters run; "kept" closes the account, so the counts add
# up to the rows read.
DROP_REASONS = ("malformed", "duplicate_id", "duplicate_path", "language", "too_short", "too_long",
                "no_match", "duplicate_title", "over_quota")


@dataclass
class CurationSummary:
    """Counts of a run: ``counts[reason]`` for DROP_REASONS and "kept"; per-class lists by index."""

    rows: int
    counts: Dict[str, int]
    class_names: List[str]
    mentioned: List[int]  # rows (after filtering) whose text mentions the class
    matched: List[int]  # rows assigned to the class, before the caps
    quota: List[int]
    kept: List[int]
    malformed_examples: List[MalformedRow] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)
    # reason -> up to EXAMPLES rows dropped for it: {"line", "id", "title", "locator", "detail"}
    examples: Dict[str, List[Dict[str, object]]] = field(default_factory=dict)

    @property
    def too_few(self) -> List[int]:
        """Classes that kept fewer videos than their quota."""
        return [index for index, (kept, quota) in enumerate(zip(self.kept, self.quota)) if kept < quota]

    def to_json(self) -> Dict[str, object]:
        classes = [{"index": index, "name": name, "mentioned": self.mentioned[index], "matched": self.matched[index],
                    "quota": self.quota[index], "kept": self.kept[index]}
                   for index, name in enumerate(self.class_names)]
        return {"rows": self.rows, "kept": self.counts["kept"], "dropped": {r: self.counts[r] for r in DROP_REASONS},
                "classes_with_videos": sum(1 for kept in self.kept if kept),
                "too_few": [{"index": i, "name": self.class_names[i], "kept": self.kept[i], "quota": self.quota[i]}
                            for i in self.too_few],
                "settings": self.settings, "dropped_examples": self.examples, "classes": classes}
