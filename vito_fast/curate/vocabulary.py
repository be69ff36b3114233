"""Class vocabularies for `vito-fast curate`, and whole-phrase matching of their synonyms in text.

A vocabulary file holds one class per line in class-index order, its synonyms comma-separated
(``tabby, tabby cat``); the first synonym is the class name. Lines that are empty or start with
``#`` are skipped and do not count as classes. ``imagenet1k`` names the shipped file of the 1,000
ImageNet-1k classes with their WordNet lemmas (see ``resources/README.md``).

Matching rules (text and synonyms are normalised by the same ``tokenize``):
- case-insensitive, accents folded, a possessive ``'s`` dropped (``kitty's toy`` matches
  ``kitty``, ``lady's slipper`` = ``lady slipper``), dotted acronyms joined (``R.V.`` = ``RV``);
  every other non-alphanumeric character (other apostrophes, hyphens, punctuation) separates
  words, so a match is always whole words: "cat" never matches "category";
- a phrase never runs across ``, ; : | ! ? " ( ) [ ] { }``, a tab or line break, or a full stop
  that follows a word of three or more characters and precedes a space (so "crane. Lifting" breaks,
  "St. Bernard" does not); tags are joined with commas, so no phrase spans two tags;
- a hyphenated synonym matches written as two words or as one (``man-eater`` = ``man eater`` =
  ``maneater``); the reverse is not tried: the synonym ``chainlink fence`` does not match
  "chain-link fence";
- plurals: the last word of each synonym also matches in its English plural (+s; +es after s, x,
  z, ch, sh; consonant+y -> ies; +s and +es after a consonant+o; +s and -ves after f/fe; a short
  table of irregular nouns such as mouse -> mice). A plural form that is itself a synonym of some
  class (``sunglasses``) belongs to that class only;
- a text is scanned left to right and at each word the longest synonym that starts there is taken
  (leftmost-longest), so "tiger cat" is one mention of the class "tiger cat", not also of "tiger".
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

RESOURCES = Path(__file__).resolve().parent / "resources"
SHIPPED_VOCABULARIES = {"imagenet1k": ("imagenet1k_synonyms.txt", "imagenet1k_wnids.txt")}

# Words, and the punctuation that ends a phrase: no match runs across a comma, a bracket, a colon,
# a line break... or a full stop after a word of 3+ characters ("crane. Lifting", not "St. Bernard").
_TOKEN = re.compile(r"[^\W_]+|[,;|!?()\[\]{}\"\n\t:]|(?<=[^\W_]{3})\.(?=\s|$)")
BOUNDARY_TOKENS = frozenset(',;|!?()[]{}"\n\t:.')
_DOTTED_ACRONYM = re.compile(r"\b(?:[^\W\d_]\.){2,}")
_POSSESSIVE = re.compile("['\u2019\u02bc]s\\b")

IRREGULAR_PLURALS = {
    "mouse": "mice", "louse": "lice", "goose": "geese", "foot": "feet", "tooth": "teeth", "man": "men",
    "woman": "women", "child": "children", "ox": "oxen", "person": "people", "cactus": "cacti",
    "fungus": "fungi", "fish": "fish", "sheep": "sheep", "deer": "deer", "bison": "bison",
}
_VOWELS = frozenset("aeiou")


def tokenize(text: str) -> List[str]:
    """Lower-case words of ``text`` and the punctuation marks that end a phrase (module docstring)."""
    if not text.isascii():
        text = "".join(char for char in unicodedata.normalize("NFKD", text) if not unicodedata.combining(char))
    text = text.lower()
    if "'" in text or "\u2019" in text or "\u02bc" in text:
        text = _POSSESSIVE.sub("", text)
    if "." in text:
        text = _DOTTED_ACRONYM.sub(lambda match: match.group().replace(".", ""), text)
    return _TOKEN.findall(text)


def _words(text: str) -> List[str]:
    return [token for token in tokenize(text) if token not in BOUNDARY_TOKENS]


def plural_forms(word: str) -> Tuple[str, ...]:
    """English plurals of one lower-case word (rules in the module docstring); () for non-words."""
    if word in IRREGULAR_PLURALS:
        return (IRREGULAR_PLURALS[word],)
    if not word.isalpha() or len(word) < 2:
        return ()
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return (word + "es",)
    if word.endswith("y") and word[-2] not in _VOWELS:
        return (word[:-1] + "ies",)
    if word.endswith("o") and word[-2] not in _VOWELS:
        return (word + "s", word + "es")
    if word.endswith("fe"):
        return (word + "s", word[:-2] + "ves")
    if word.endswith("f"):
        return (word + "s", word[:-1] + "ves")
    return (word + "s",)


@dataclass(frozen=True)
class Vocabulary:
    """Classes in index order: ``synonyms[i]`` are class i's phrases as written, the name first."""

    synonyms: Tuple[Tuple[str, ...], ...]
    source: str
    wnids: Optional[Tuple[str, ...]] = None  # WordNet ids of the shipped ImageNet vocabulary

    def __len__(self) -> int:
        return len(self.synonyms)

    @cached_property
    def names(self) -> List[str]:
        return [synonyms[0] for synonyms in self.synonyms]

    def label(self, class_index: int) -> str:
        """The label stored in curated records: the WordNet id if known, else the class name."""
        return self.wnids[class_index] if self.wnids else self.synonyms[class_index][0]


def parse_vocabulary(lines: Iterable[str], source: str) -> Vocabulary:
    """Parse vocabulary text; ValueError names ``source`` and the line of a class without synonyms."""
    classes = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        synonyms = tuple(part.strip() for part in line.split(",") if part.strip())
        if not synonyms or not all(_words(synonym) for synonym in synonyms):
            raise ValueError(f"{source}:{number}: a class needs synonyms made of letters or digits, got {line!r}")
        classes.append(synonyms)
    if not classes:
        raise ValueError(f"{source}: no classes (one class per line, synonyms comma-separated)")
    return Vocabulary(tuple(classes), source)


def load_vocabulary(spec: Union[str, os.PathLike]) -> Vocabulary:
    """``"imagenet1k"`` (shipped) or the path of a vocabulary file."""
    if str(spec) in SHIPPED_VOCABULARIES:
        synonyms_file, wnids_file = SHIPPED_VOCABULARIES[str(spec)]
        with open(RESOURCES / synonyms_file, encoding="utf-8") as handle:
            vocabulary = parse_vocabulary(handle, str(spec))
        wnids = tuple((RESOURCES / wnids_file).read_text(encoding="utf-8").split())
        if len(wnids) != len(vocabulary):
            raise ValueError(f"{wnids_file}: {len(wnids)} ids for {len(vocabulary)} classes; reinstall vito_fast")
        return Vocabulary(vocabulary.synonyms, vocabulary.source, wnids)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocabulary file (or name one of {sorted(SHIPPED_VOCABULARIES)})")
    with open(path, encoding="utf-8") as handle:
        return parse_vocabulary(handle, str(path))


# A phrase in the matcher's table: the class and the synonym (as written) it stands for.
PhraseEntry = Tuple[int, str]


class PhraseMatcher:
    """Finds the vocabulary's synonyms in token lists, leftmost-longest, in O(words × longest synonym)."""

    def __init__(self, vocabulary: Vocabulary, plurals: bool = True):
        exact: Dict[str, List[PhraseEntry]] = {}
        derived: Dict[str, List[PhraseEntry]] = {}
        for class_index, synonyms in enumerate(vocabulary.synonyms):
            for synonym in synonyms:
                spellings = {" ".join(_words(synonym))}
                if "-" in synonym:
                    spellings.add(" ".join(_words(synonym.replace("-", ""))))
                for spelling in spellings:
                    _add(exact, spelling, (class_index, synonym))
                    if plurals:
                        head, _, last = spelling.rpartition(" ")
                        for plural in plural_forms(last):
                            _add(derived, f"{head} {plural}" if head else plural, (class_index, synonym))
        for spelling, entries in derived.items():
            if spelling not in exact:  # a plural that is some class's own synonym stays that class's
                exact[spelling] = entries
        self.phrases: Dict[str, Tuple[PhraseEntry, ...]] = {key: tuple(value) for key, value in exact.items()}
        self.longest_from: Dict[str, int] = {}  # first word -> most words of a phrase starting with it
        for spelling in self.phrases:
            words = spelling.split(" ")
            self.longest_from[words[0]] = max(self.longest_from.get(words[0], 0), len(words))
        self.max_words = max(self.longest_from.values())

    def find(self, words: Sequence[str]) -> List[Tuple[int, str]]:
        """(number of words, phrase key) of each leftmost-longest match in ``words``."""
        longest_from = self.longest_from
        if longest_from.keys().isdisjoint(words):  # most texts: one pass in C, no Python loop
            return []
        phrases, matches = self.phrases, []
        count, covered = len(words), 0  # words before ``covered`` belong to a match already
        for position in [index for index, word in enumerate(words) if word in longest_from]:
            if position < covered:
                continue
            for size in range(min(longest_from[words[position]], count - position), 0, -1):
                key = words[position] if size == 1 else " ".join(words[position:position + size])
                if key in phrases:
                    matches.append((size, key))
                    covered = position + size
                    break
        return matches


def _add(table: Dict[str, List[PhraseEntry]], key: str, entry: PhraseEntry) -> None:
    entries = table.setdefault(key, [])
    if all(existing[0] != entry[0] for existing in entries):
        entries.append(entry)
