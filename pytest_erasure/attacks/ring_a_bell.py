"""Ring-A-Bell: a genetic search for prompts whose text embedding carries an erased concept.

Ring-A-Bell (Tsai et al., ICLR 2024; chiayi-hsu/Ring-A-Bell) builds a *concept vector* on the
standard text encoder, the mean over paired prompts of ``encode(with concept) - encode(without)``
over all 77 positions, and aims at ``encode(prompt) + eta * vector``: a prompt that names the
concept, pushed further along the concept's direction. A genetic search over K free token ids
(``<bos> t_1 .. t_K <eos> <pad>...``) minimises the squared distance of their embedding to that
target. The prompts it finds rarely name the concept, so an erasure that edits the concept's
word does not see them coming; they are then fed as text to the erased model (black-box transfer).

Independent of pytest: `ring_a_bell(text_encoder, tokenizer, prompt, pairs, settings)`.

Differences from the published notebook, all deliberate:
- the whole population is evaluated in one batched text-encoder call per generation (the
  notebook encodes one individual at a time, which is what makes it slow);
- elites are copied unchanged (the notebook mutates its parents in place, so its best loss can
  go up), so the best loss never increases;
- every random draw comes from one seeded `torch.Generator`: same inputs, same prompts;
- free tokens are drawn from ids that decode to text on their own (no special tokens, no
  lone UTF-8 byte fragments), and besides the found token ids we report the loss of their
  decoded text re-tokenized, since text is what the erased model receives and decoding does
  not always round-trip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_erasure.concepts import PLACEHOLDER, Concept

if TYPE_CHECKING:
    import torch

NEUTRAL_WORD = "thing"
"""Replaces the concept's term in generated `without` prompts: a noun that names nothing."""


@dataclass(frozen=True)
class SearchSettings:
    """The genetic search's budget. Defaults are the published SD v1.4 settings (docs/methods.md)."""

    tokens: int = 16
    """K: free token ids between <bos> and <eos>."""
    population: int = 200
    generations: int = 3000
    """Evaluations of the population (the first is the random initial population)."""
    eta: float = 3.0
    """How far along the concept vector the target lies."""
    mutation: float = 0.25
    """Probability that a child has one random position replaced by a random token id."""
    crossover: float = 0.5
    """Probability that a child is a one-point crossover of two parents (else a parent's copy)."""
    elitism: float = 0.1
    """Fraction of the population (at least one) carried over unchanged."""
    selection: float = 0.5
    """Fraction of the population (the fittest) that may parent children, as in the notebook."""
    keep: int = 4
    """Distinct best prompts returned."""
    seed: int = 0

    def validate(self) -> None:
        if self.tokens < 1 or self.tokens > 75:
            raise ValueError(f"tokens (K) must be in 1..75, got {self.tokens}")
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if self.generations < 1:
            raise ValueError(f"generations must be >= 1, got {self.generations}")
        for name in ("mutation", "crossover", "elitism", "selection"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")

    @property
    def elites(self) -> int:
        return max(1, min(self.population - 1, round(self.elitism * self.population)))

    @property
    def parents(self) -> int:
        return max(2, min(self.population, round(self.selection * self.population)))


SD14 = SearchSettings()
"""Ring-A-Bell's published settings for SD v1.4 (K=16, population 200, 3000 generations)."""

SHAPES = SearchSettings(tokens=8, population=64, generations=150)
"""Scaled down for the shapes world's small text encoder and vocabulary (CPU minutes)."""


@dataclass
class SearchResult:
    prompt: str
    """The target prompt (names the concept)."""
    prompts: list[str]
    """Decoded best individuals, best first (distinct token sequences)."""
    token_ids: torch.Tensor
    """(keep, K) int64: the best individuals' free token ids."""
    losses: list[float]
    """Squared distance of each kept individual's embedding to the target."""
    text_losses: list[float]
    """The same for its decoded text re-tokenized: what the attacked model actually sees."""
    history: list[float]
    """Best loss after each generation (non-increasing)."""
    settings: SearchSettings = field(default_factory=SearchSettings)

    def describe(self) -> dict[str, Any]:
        return {
            "target_prompt": self.prompt,
            "prompts": self.prompts,
            "token_ids": self.token_ids.tolist(),
            "losses": self.losses,
            "text_losses": self.text_losses,
            "initial_loss": self.history[0],
            "final_loss": self.history[-1],
            "settings": asdict(self.settings),
        }


def default_paired_prompts(concept: Concept, neutral: str = NEUTRAL_WORD
                           ) -> list[tuple[str, str]]:
    """(with, without) pairs when the concepts file declares none.

    Every prompt template once with the term and each synonym, against the same template with
    a neutral noun: the difference isolates what the concept's words add to the embedding.
    """
    pairs: list[tuple[str, str]] = []
    for template in concept.prompts:
        without = template.replace(PLACEHOLDER, neutral)
        for word in (concept.term, *concept.synonyms):
            pair = (template.replace(PLACEHOLDER, word), without)
            if pair[0] != pair[1] and pair not in pairs:
                pairs.append(pair)
    return pairs


def paired_prompts(concept: Concept) -> list[tuple[str, str]]:
    return list(concept.paired_prompts) or default_paired_prompts(concept)


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """(N, max_length) ids, padded and truncated as Stable Diffusion's pipeline does."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def encode(text_encoder: Any, ids: torch.Tensor) -> torch.Tensor:
    """(N, L) ids -> (N, L, D) float32 last hidden states: what SD's UNet is conditioned on."""
    import torch

    with torch.no_grad():
        out = text_encoder(ids.to(text_encoder.device))[0]
    return out.float()


def concept_vector(text_encoder: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]
                   ) -> torch.Tensor:
    """(L, D): mean over pairs of encode(with) - encode(without), in one batched call."""
    if not pairs:
        raise ValueError("the concept vector needs at least one (with, without) prompt pair")
    with_, without = zip(*pairs, strict=True)
    embeds = encode(text_encoder, tokenize(tokenizer, [*with_, *without]))
    return (embeds[: len(pairs)] - embeds[len(pairs):]).mean(dim=0)


def candidate_ids(tokenizer: Any) -> torch.Tensor:
    """Token ids a found prompt may use: all but the special ones (<bos>, <eos>, <pad>, <unk>)
    and the byte fragments that decode to no text on their own (a lone UTF-8 continuation
    byte decodes to U+FFFD, and the model would receive something else)."""
    import torch

    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids])
    keep = [i for i, text in zip(ids, texts, strict=True) if text.strip() and "\ufffd" not in text]
    return torch.tensor(keep, dtype=torch.long)


def genetic_search(
    evaluate: Callable[[torch.Tensor], torch.Tensor],
    vocab: torch.Tensor,
    settings: SearchSettings,
    on_generation: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Minimise `evaluate` over (N, K) token-id individuals drawn from `vocab`.

    `evaluate` maps a batch of individuals to their (N,) losses; it is called exactly once per
    generation, on every individual whose loss is not known yet (the initial population, then
    the children; elites keep their loss). Returns the final population sorted by loss
    ((P, K) ids, (P,) losses) and the best loss after each generation.
    """
    import torch

    settings.validate()
    gen = torch.Generator().manual_seed(settings.seed)
    p, k = settings.population, settings.tokens
    n_elite, n_parents, n_children = settings.elites, settings.parents, p - settings.elites

    def draw_tokens(*shape: int) -> torch.Tensor:
        return vocab[torch.randint(len(vocab), shape, generator=gen)]

    population = draw_tokens(p, k)
    losses = evaluate(population).float().cpu()
    history: list[float] = []
    for g in range(settings.generations):
        if g > 0:
            parents = population[:n_parents]
            a = parents[torch.randint(n_parents, (n_children,), generator=gen)]
            b = parents[torch.randint(n_parents, (n_children,), generator=gen)]
            # One-point crossover: child = a[:cut] + b[cut:], cut in 1..K-1.
            cut = torch.randint(1, max(k, 2), (n_children, 1), generator=gen)
            crossed = torch.rand(n_children, 1, generator=gen) < settings.crossover
            take_b = crossed & (torch.arange(k).unsqueeze(0) >= cut)
            children = torch.where(take_b, b, a)
            # Mutation: one random position of the child gets a random token id.
            mutate = torch.rand(n_children, generator=gen) < settings.mutation
            position = torch.randint(k, (n_children,), generator=gen)
            replacement = draw_tokens(n_children)
            rows = mutate.nonzero().squeeze(1)
            children[rows, position[rows]] = replacement[rows]
            child_losses = evaluate(children).float().cpu()
            population = torch.cat([population[:n_elite], children])
            losses = torch.cat([losses[:n_elite], child_losses])
        order = torch.argsort(losses, stable=True)
        population, losses = population[order], losses[order]
        history.append(float(losses[0]))
        if on_generation is not None:
            on_generation(g, history[-1])
    return population, losses, history


def frame(tokenizer: Any, tokens: torch.Tensor) -> torch.Tensor:
    """(N, K) free ids -> (N, max_length) `<bos> tokens <eos> <pad>...` sequences."""
    import torch

    n, k = tokens.shape
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n, length), pad, dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, 1:k + 1] = tokens
    ids[:, k + 1] = tokenizer.eos_token_id
    return ids


def ring_a_bell(
    text_encoder: Any,
    tokenizer: Any,
    prompt: str,
    pairs: Sequence[tuple[str, str]],
    settings: SearchSettings = SD14,
    vector: torch.Tensor | None = None,
    on_generation: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Search prompts whose embedding is close to encode(prompt) + eta * concept vector.

    `text_encoder` is the *standard* model's (black-box transfer). `vector` may be passed to
    share one concept vector between several target prompts.
    """

    settings.validate()
    if settings.tokens + 2 > tokenizer.model_max_length:
        raise ValueError(f"tokens (K={settings.tokens}) does not fit in "
                         f"{tokenizer.model_max_length} positions with <bos> and <eos>")
    if vector is None:
        vector = concept_vector(text_encoder, tokenizer, pairs)
    target = encode(text_encoder, tokenize(tokenizer, [prompt]))[0] + settings.eta * vector

    def evaluate(tokens: torch.Tensor) -> torch.Tensor:
        embeds = encode(text_encoder, frame(tokenizer, tokens))
        return ((embeds - target.to(embeds.device)) ** 2).sum(dim=(1, 2))

    population, losses, history = genetic_search(
        evaluate, candidate_ids(tokenizer), settings, on_generation)
    kept: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for i, row in enumerate(population.tolist()):
        if tuple(row) not in seen:
            seen.add(tuple(row))
            kept.append(i)
        if len(kept) == settings.keep:
            break
    tokens = population[kept]
    texts = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens.tolist()]
    # What the attacked model receives is the text: measure it after a tokenization round trip.
    text_embeds = encode(text_encoder, tokenize(tokenizer, texts))
    text_losses = ((text_embeds - target.to(text_embeds.device)) ** 2).sum(dim=(1, 2))
    return SearchResult(
        prompt=prompt,
        prompts=texts,
        token_ids=tokens.clone(),
        losses=[float(x) for x in losses[kept]],
        text_losses=[float(x) for x in text_losses.cpu()],
        history=history,
        settings=settings,
    )


def scale_note(settings: SearchSettings) -> str:
    """One line for reports: how this budget compares with the published one."""
    evals = settings.population + (settings.generations - 1) * (
        settings.population - settings.elites)
    published = SD14.population * SD14.generations
    return (f"{evals} prompt evaluations ({evals / published:.1%} of the published "
            f"{published}); K={settings.tokens}, eta={settings.eta}")


__all__ = [
    "SD14", "SHAPES", "SearchResult", "SearchSettings", "concept_vector", "default_paired_prompts",
    "encode", "genetic_search", "paired_prompts", "ring_a_bell", "scale_note", "tokenize",
]

