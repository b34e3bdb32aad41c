"""Hypothesis strategies over the ways a user might ask for a concept.

A prompt variant is built from the concept's own vocabulary (its concepts-file entry): a
template (`prompts`), a noun (`term` or one of `synonyms`), up to two `modifiers` (colours,
sizes) before the noun, optionally a different word order, up to two typos (a character
dropped, swapped with its neighbour or doubled) and a casing.

Every choice is ordered so that hypothesis shrinks towards the plainest prompt: the shortest
template, the concept's own term, no modifiers, the original order, no typos, the original
case. A bypass is therefore reported as the least unusual prompt that still brings the concept
back, e.g. "a disc" rather than "A PICTURE OF A lArge dsic".

Hypothesis is imported only inside `prompt_variants` (this module is imported by the plugin).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pytest_erasure.concepts import PLACEHOLDER, Concept

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

CASINGS = ("as-is", "lower", "upper", "title", "alternating")
TYPOS = ("drop", "swap", "double")
MAX_MODIFIERS = 2
MAX_TYPOS = 2
STRATEGY_VERSION = 1
"""Part of the hypothesis database key: bump when a change remaps stored choice sequences."""


@dataclass(frozen=True)
class Vocabulary:
    templates: tuple[str, ...]
    nouns: tuple[str, ...]
    modifiers: tuple[str, ...]

    @classmethod
    def of(cls, concept: Concept) -> Vocabulary:
        # Shortest template first: that is where shrinking lands.
        templates = tuple(sorted(dict.fromkeys(concept.prompts), key=lambda t: (len(t), t)))
        nouns = tuple(dict.fromkeys((concept.term, *concept.synonyms)))
        return cls(templates, nouns, tuple(dict.fromkeys(concept.modifiers)))


@dataclass(frozen=True)
class PromptVariant:
    """One way of asking for the concept; `text` is the prompt."""

    template: str
    noun: str
    modifiers: tuple[str, ...] = ()
    order: tuple[int, ...] | None = None
    """A permutation of the words, or None for the template's order."""
    typos: tuple[tuple[str, int], ...] = ()
    """(kind, position) applied in turn; positions wrap around the text's length."""
    casing: str = "as-is"

    @property
    def text(self) -> str:
        words = " ".join((*self.modifiers, self.noun))
        text = " ".join(self.template.replace(PLACEHOLDER, words).split())
        if self.order is not None:
            parts = text.split(" ")
            text = " ".join(parts[i] for i in self.order if i < len(parts))
        for kind, position in self.typos:
            text = typo(text, kind, position)
        return recase(text, self.casing)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["text"] = self.text
        return out

    def to_json(self) -> str:
        return json.dumps(self.describe(), sort_keys=True)


def typo(text: str, kind: str, position: int) -> str:
    if not text:
        return text
    i = position % len(text)
    if kind == "drop":
        return text[:i] + text[i + 1:]
    if kind == "double":
        return text[:i + 1] + text[i:]
    if kind == "swap":
        if len(text) < 2:
            return text
        i = min(i, len(text) - 2)
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    raise ValueError(f"unknown typo kind {kind!r}")


def recase(text: str, casing: str) -> str:
    if casing == "as-is":
        return text
    if casing == "lower":
        return text.lower()
    if casing == "upper":
        return text.upper()
    if casing == "title":
        return text.title()
    if casing == "alternating":
        return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(text))
    raise ValueError(f"unknown casing {casing!r}")


def prompt_variants(concept: Concept) -> SearchStrategy[PromptVariant]:
    """All variants of the concept's prompts; shrinks towards its plainest prompt."""
    from hypothesis import strategies as st

    vocab = Vocabulary.of(concept)

    @st.composite
    def variants(draw: Any) -> PromptVariant:
        template = draw(st.sampled_from(vocab.templates))
        noun = draw(st.sampled_from(vocab.nouns))
        modifiers: tuple[str, ...] = ()
        if vocab.modifiers:
            modifiers = tuple(draw(st.lists(st.sampled_from(vocab.modifiers),
                                            max_size=MAX_MODIFIERS, unique=True)))
        n_words = len(PromptVariant(template, noun, modifiers).text.split(" "))
        order = None
        if n_words > 1 and draw(st.booleans()):
            order = tuple(draw(st.permutations(range(n_words))))
        typos = tuple(draw(st.lists(st.tuples(st.sampled_from(TYPOS), st.integers(0, 255)),
                                    max_size=MAX_TYPOS)))
        casing = draw(st.sampled_from(CASINGS))
        return PromptVariant(template, noun, modifiers, order, typos, casing)

    return variants()
