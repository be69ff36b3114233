"""Rebuild imagenet1k_synonyms.txt and imagenet1k_wnids.txt from timm's ImageNet info files.

    pip download --no-deps timm -d /tmp/timm && cd /tmp/timm && unzip -q timm-*.whl 'timm/data/_info/*'
    python vito_fast/curate/resources/make_imagenet1k_synonyms.py /tmp/timm/timm/data/_info

Reads ``imagenet_synsets.txt`` (the 1,000 ImageNet-1k WordNet ids) and
``imagenet_synset_to_lemma.txt`` (WordNet id <TAB> comma-separated lemmas), sorts the ids (the
standard class-index order: class 0 is n01440764 "tench"), and writes one class per line with its
lemmas comma-separated, plus the ids in the same order. timm is not a dependency: it is only where
this public data was found.
"""
from __future__ import annotations

import sys
from pathlib import Path

HEADER = ("# ImageNet-1k classes in class-index order (sorted WordNet ids): one class per line, synonyms\n"
          "# comma-separated. Lemmas from WordNet 3.0 (Princeton University, WordNet licence), as listed\n"
          "# in timm's imagenet_synset_to_lemma.txt; see README.md in this folder.\n")


def main(argv: list) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    wnids = sorted(line.strip() for line in (source / "imagenet_synsets.txt").read_text().splitlines() if line.strip())
    lemmas = dict(line.split("\t", 1) for line in (source / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise SystemExit(f"expected 1,000 distinct ImageNet-1k ids, found {len(set(wnids))}")
    missing = [wnid for wnid in wnids if wnid not in lemmas]
    if missing:
        raise SystemExit(f"no lemmas for {len(missing)} ids, e.g. {missing[:3]}")
    here = Path(__file__).resolve().parent
    rows = [", ".join(lemma.strip() for lemma in lemmas[wnid].split(",") if lemma.strip()) for wnid in wnids]
    (here / "imagenet1k_synonyms.txt").write_text(HEADER + "\n".join(rows) + "\n")
    (here / "imagenet1k_wnids.txt").write_text("\n".join(wnids) + "\n")
    print(f"wrote {len(rows)} classes to {here}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
