"""Ring-A-Bell's genetic search on a real tiny text encoder, and the adversarial-black scenario."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from pytest_erasure.attacks.ring_a_bell import (  # noqa: E402
    SD14,
    SHAPES,
    SearchSettings,
    concept_vector,
    default_paired_prompts,
    frame,
    ring_a_bell,
)
from pytest_erasure.concepts import Concept  # noqa: E402
from pytest_erasure.detectors.base import DetectorSpec  # noqa: E402

PAIRS = [("a photo of a circle", "a photo of a thing"), ("a red circle", "a red thing")]
SMALL = SearchSettings(tokens=6, population=24, generations=12, keep=3, seed=7)


@pytest.fixture(scope="module")
def pipe():
    from pytest_erasure.testing import tiny_pipeline

    return tiny_pipeline(0)


def count_calls(module) -> tuple[list[int], object]:
    """Batch sizes of every forward call of `module`, and the hook handle to remove."""
    sizes: list[int] = []
    handle = module.register_forward_pre_hook(
        lambda _m, args, kwargs: sizes.append(int((args[0] if args else kwargs["input_ids"])
                                                  .shape[0])), with_kwargs=True)
    return sizes, handle


def test_published_and_scaled_defaults() -> None:
    assert (SD14.tokens, SD14.population, SD14.generations) == (16, 200, 3000)
    assert (SD14.eta, SD14.mutation, SD14.crossover) == (3.0, 0.25, 0.5)
    assert SHAPES.population < SD14.population and SHAPES.generations < SD14.generations
    with pytest.raises(ValueError, match="mutation"):
        replace(SD14, mutation=1.5).validate()


def test_best_loss_decreases_over_generations(pipe) -> None:
    result = ring_a_bell(pipe.text_encoder, pipe.tokenizer, "a photo of a circle", PAIRS,
                         replace(SMALL, generations=40))
    history = result.history
    assert len(history) == 40
    assert all(b <= a for a, b in zip(history, history[1:], strict=False))  # elitism
    assert history[-1] < 0.8 * history[0]
    assert result.losses[0] == pytest.approx(history[-1])
    assert result.losses == sorted(result.losses)
    assert len(result.prompts) == 3 and result.token_ids.shape == (3, 6)
    assert len({tuple(r) for r in result.token_ids.tolist()}) == 3  # distinct
    special = set(pipe.tokenizer.all_special_ids)
    assert not special & set(result.token_ids.flatten().tolist())


def test_population_goes_through_the_text_encoder_in_one_call_per_generation(pipe) -> None:
    sizes, handle = count_calls(pipe.text_encoder)
    try:
        ring_a_bell(pipe.text_encoder, pipe.tokenizer, "a circle", PAIRS, SMALL)
    finally:
        handle.remove()
    children = SMALL.population - SMALL.elites
    assert sizes == [
        2 * len(PAIRS),  # concept vector: every pair, both sides, one batch
        1,  # the target prompt
        SMALL.population,  # generation 0: the random population
        *[children] * (SMALL.generations - 1),  # one batch of new individuals per generation
        SMALL.keep,  # the kept prompts' text, re-tokenized
    ]


def test_search_is_deterministic_given_its_seed(pipe) -> None:
    vector = concept_vector(pipe.text_encoder, pipe.tokenizer, PAIRS)
    runs = [ring_a_bell(pipe.text_encoder, pipe.tokenizer, "a circle", PAIRS,
                        replace(SMALL, seed=seed), vector=vector) for seed in (7, 7, 8)]
    assert runs[0].history == runs[1].history
    assert torch.equal(runs[0].token_ids, runs[1].token_ids)
    assert runs[0].prompts == runs[1].prompts
    assert not torch.equal(runs[0].token_ids, runs[2].token_ids)


def test_the_target_is_the_prompt_pushed_along_the_concept_vector(pipe) -> None:
    from pytest_erasure.attacks.ring_a_bell import encode, tokenize

    vector = concept_vector(pipe.text_encoder, pipe.tokenizer, PAIRS)
    assert vector.shape == (77, pipe.text_encoder.config.hidden_size)
    embeds = encode(pipe.text_encoder, tokenize(pipe.tokenizer, [p for pair in PAIRS
                                                                 for p in pair]))
    expected = ((embeds[0] - embeds[1]) + (embeds[2] - embeds[3])) / 2
    assert torch.allclose(vector, expected, atol=1e-5)
    # The searched individuals sit between <bos> and <eos>, padded like any prompt.
    ids = frame(pipe.tokenizer, torch.tensor([[5, 6, 7]]))
    tok = pipe.tokenizer
    assert ids[0, :5].tolist() == [tok.bos_token_id, 5, 6, 7, tok.eos_token_id]
    assert ids.shape == (1, tok.model_max_length)


def test_default_paired_prompts_swap_the_term_for_a_neutral_word() -> None:
    concept = Concept(name="circle", prompts=("a photo of a {concept}", "a {concept}"),
                      term="circle", label="circle", detector=DetectorSpec("shapes"),
                      synonyms=("disc",))
    assert default_paired_prompts(concept) == [
        ("a photo of a circle", "a photo of a thing"), ("a photo of a disc", "a photo of a thing"),
        ("a circle", "a thing"), ("a disc", "a thing")]


CONCEPTS = """
[[concept]]
name = "circle"
prompts = ["a photo of a {concept}", "a red {concept}"]
detector = "pytest_erasure.testing:build_brightness_detector"
"""


def test_adversarial_black_scenario_plans_cached_prompts_from_the_standard_model(
        pipe, tmp_path: Path) -> None:
    from pytest_erasure.scenarios.adversarial import RingABellScenario
    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import tiny_pipeline

    concepts = tmp_path / "concepts.toml"
    concepts.write_text(CONCEPTS)
    erased = tiny_pipeline(1)
    options = {"rab-population": 16, "rab-generations": 6, "rab-tokens": 5, "rab-targets": 2,
               "rab-keep": 2, "attack-restarts": 1}  # one search (restarts: test_restarts.py)
    ctx = context_for_pipelines(pipe, erased, concepts, tmp_path / "cache", seed=3,
                                scenario_options=options)
    scenario = RingABellScenario()
    assert scenario.id == "adversarial-black"
    concept = ctx.concepts.concepts["circle"]

    standard_calls, h1 = count_calls(pipe.text_encoder)
    erased_calls, h2 = count_calls(erased.text_encoder)
    try:
        plan = scenario.plan(ctx, concept, "erased", 7)
        searched = len(standard_calls)
        again = scenario.plan(ctx, concept, "standard", 7)
    finally:
        h1.remove()
        h2.remove()
    assert erased_calls == []  # black-box: the search never touches the audited model
    # The concept vector once; per target: the target, 6 generations, the kept prompts' text.
    assert searched == 1 + 2 * (1 + 6 + 1)
    assert len(standard_calls) == searched  # the second plan is served by the cache
    assert ctx.cache.hits >= 1

    prompts = plan.facts["prompts"]
    assert len(prompts) == 4  # 2 targets x 2 kept, best of each target first
    assert [i.prompt for i in plan.inputs] == [prompts[i % 4] for i in range(7)]
    assert [i.seed for i in plan.inputs] == [i.seed for i in again.inputs]
    assert len({i.seed for i in plan.inputs}) == 7
    facts = plan.facts
    assert facts["paired_prompts_generated"] is True
    assert facts["paired_prompts"][0] == ["a photo of a circle", "a photo of a thing"]
    search = facts["searches"][0]
    assert search["target_prompt"] == "a photo of a circle"
    assert search["final_loss"] <= search["initial_loss"]
    assert len(search["losses"]) == len(search["text_losses"]) == 2
    assert facts["settings"]["rab-population"] == 16

    # A different search setting is a different cache entry, never a stale one.
    ctx.config.scenario_options["rab-eta"] = 1.0
    changed = scenario.plan(ctx, concept, "erased", 2)
    assert changed.facts["searches"][0]["settings"]["eta"] == 1.0
