"""The white-box adversarial-prompt attacks' pieces against the published code they follow
(`attacks/adversarial_prompts.py`), on the tiny SD-architecture pipeline."""

from __future__ import annotations

import pytest
import torch

from pytest_erasure.attacks.adversarial_prompts import (
    AttackSettings,
    first_step,
    layout,
    optimise,
    ordinary_ids,
    project_simplex,
    random_prompts,
    timesteps_for,
)
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.testing import tiny_pipeline


def test_unlearndiffatk_visits_the_published_timesteps() -> None:
    # classifier_.py: start = T // n // 2, then every T // n, 50 of them
    assert timesteps_for(50, 1000) == list(range(10, 1000, 20))
    assert timesteps_for(8, 1000) == [62, 187, 312, 437, 562, 687, 812, 937]


def test_the_projection_lands_on_the_simplex_and_keeps_what_is_there() -> None:
    v = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(0)) * 3
    p = project_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(3, 4)) and bool((p >= 0).all())
    assert torch.allclose(project_simplex(p), p, atol=1e-6)
    # the nearest point: no other simplex point is closer than the projection
    other = torch.softmax(torch.randn(3, 4, 50), -1)
    assert bool(((v - p).norm(dim=-1) <= (v - other).norm(dim=-1) + 1e-6).all())


def test_p4d_k_inserts_a_token_before_every_k_prompt_tokens() -> None:
    tokenizer = tiny_pipeline(0).tokenizer
    content = tokenizer("a red circle", add_special_tokens=False).input_ids
    lay = layout(tokenizer, ["a red circle"], "p4d-k", 16, 3)
    # optimize_k.py: len // k + 1 learnable tokens, at the positions i % (k + 1) == 0
    assert lay.slots == [len(content) // 3 + 1] == [2]
    assert lay.which[0, :7].tolist() == [-1, 0, -1, -1, -1, 1, -1]
    assert lay.ids[0, 2:5].tolist() == content and lay.ids[0, 6] == tokenizer.eos_token_id
    prefix = layout(tokenizer, ["a red circle"], "unlearndiffatk", 5, 3)
    assert prefix.which[0, 1:6].tolist() == [0, 1, 2, 3, 4] and prefix.slots == [5]


def test_bad_settings_name_the_option() -> None:
    for settings, option in ((AttackSettings(tokens=0), "--udatk-tokens"),
                             (AttackSettings(lr=0.0), "--udatk-lr"),
                             (AttackSettings(lr=-1.0), "--udatk-lr"),
                             (AttackSettings(weight_decay=-0.1), "--udatk-weight-decay"),
                             (AttackSettings(method="p4d-k", every_k=0), "--udatk-every-k")):
        with pytest.raises(ErasureInputError, match=option):
            settings.validate("udatk")
    with pytest.raises(ErasureInputError, match="--udatk-iterations"):
        AttackSettings(eval_every=0).validate("udatk", {"eval-every": "udatk-iterations"})


class _Idle:
    """A defense surrogate that defends no sample: the attack must be the undefended one."""

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def redraw(self, draw):
        self.calls += 1
        return {**draw, "defended": torch.zeros(len(draw["t"]), dtype=torch.bool)}

    def __call__(self, noisy, latents, noise, t, draw):
        return noisy, noise


@pytest.mark.parametrize("method", ["unlearndiffatk", "p4d-n", "p4d-k"])
def test_an_idle_surrogate_is_the_plain_attack_and_found_prompts_type_back(method: str) -> None:
    pipe, reference = tiny_pipeline(0), tiny_pipeline(1)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = AttackSettings(method, 4, 6, 2, 0.05 if method == "unlearndiffatk" else 0.1, 0.1)
    plain = optimise(pipe, reference, images, ["a circle", "a red circle"], [5, 6], settings)
    idle = _Idle()
    through = optimise(pipe, reference, images, ["a circle", "a red circle"], [5, 6], settings,
                       surrogate=idle)
    assert idle.calls == 6 and through == plain
    assert [len(r["candidates"]) for r in plain] == [settings.candidates()] * 2 == [3, 3]
    # whole-word tokens only: the decoded text tokenizes back into ordinary tokens and the
    # searched prompt's own words stay in it (the UnlearnDiffAtk prefix, P4D-K's insertions)
    allowed = set(ordinary_ids(pipe.tokenizer))
    for run, prompt in zip(plain, ["a circle", "a red circle"], strict=True):
        for text in run["candidates"]:
            ids = pipe.tokenizer(text, add_special_tokens=False).input_ids
            assert set(ids) <= allowed, text
            if method != "p4d-n":
                assert text.endswith(prompt) or prompt.split()[-1] in text, text


@pytest.mark.parametrize(("method", "slots"), [("unlearndiffatk", 5), ("p4d-n", 16),
                                               ("p4d-k", None)])
def test_the_random_prefix_control_draws_the_attacks_random_start(method: str,
                                                                  slots: int | None) -> None:
    tokenizer = tiny_pipeline(0).tokenizer
    settings = AttackSettings(method, 5 if method == "unlearndiffatk" else 16, 8, 2)
    prompts, seeds = ["a circle", "a red circle"], [5, 6]
    drawn = random_prompts(tokenizer, prompts, seeds, settings, 7)
    assert [len(texts) for texts in drawn] == [7, 7]
    # reproducible from the search's seed alone; a search's draws are not all the same start
    assert random_prompts(tokenizer, prompts[::-1], seeds[::-1], settings, 7) == drawn[::-1]
    assert all(len(set(texts)) > 1 for texts in drawn)
    words = {w[:-len("</w>")] for w in tokenizer.convert_ids_to_tokens(ordinary_ids(tokenizer))}
    for prompt, texts in zip(prompts, drawn, strict=True):
        for text in texts:
            # the attack's prompt form: its slots filled with whole words, the prompt kept
            # (UnlearnDiffAtk after its k-word prefix, P4D-K interleaved), nothing else
            mine, own = text.split(), prompt.split()
            if method == "p4d-k":  # optimize_k.py: len // 3 + 1 slots, one before every 3
                slots = len(own) // 3 + 1
            assert slots is not None and len(mine) == slots + (0 if method == "p4d-n" else len(own)), text
            if method == "unlearndiffatk":
                assert mine[slots:] == own and set(mine[:slots]) <= words, text
            elif method == "p4d-n":
                assert set(mine) <= words, text
            else:
                at = [i for i in range(len(mine)) if i % 4 == 0]
                assert [w for i, w in enumerate(mine) if i not in at] == own, text
                assert {mine[i] for i in at} <= words, text


def test_a_candidates_first_step_is_the_gradient_steps_before_it() -> None:
    # UnlearnDiffAtk judges after each timestep's steps; P4D decodes before the step's update
    assert [first_step(AttackSettings("unlearndiffatk", 5, 40, 5), k) for k in (0, 7)] == [5, 40]
    assert [first_step(AttackSettings("p4d-n", 16, 60, 10), k) for k in (0, 5)] == [0, 50]


@pytest.mark.parametrize("given", ["", "0", "-3", "some", "1.5"])
def test_a_bad_control_value_names_the_option(given: str) -> None:
    from pytest_erasure.scenarios.adversarial_white import parse_control

    with pytest.raises(ErasureInputError, match="--advw-control"):
        parse_control(given)
    assert [parse_control(v) for v in ("match", "OFF", " 12 ")] == ["match", "off", 12]


def _found(flags: list[bool], candidates: list[int]) -> list[dict]:
    return [{"kept": {"flagged": f, "candidate": k}} for f, k in zip(flags, candidates,
                                                                     strict=True)]


def test_the_statement_tells_an_optimised_success_from_a_random_start() -> None:
    from pytest_erasure.scenarios.adversarial_white import (
        _rate,
        control_statement,
        first_success,
    )

    settings = {"unlearndiffatk": AttackSettings("unlearndiffatk", 5, 40, 5)}
    judged = [("original prompt", None, _found([False] * 4, [0] * 4)),
              ("unlearndiffatk", None, _found([True, True, True, False], [0, 1, 7, 7]))]
    first = first_success(judged, settings, 4)
    assert first["unlearndiffatk"]["steps"] == [5, 10, 40]
    assert first["unlearndiffatk"]["candidates"] == [1, 2, 8]
    assert (first["search"]["median"], first["search"]["max"]) == (10, 40)
    # only the optimisation found it: both rates, no claim that random starts do as well
    below = {"draws_per_search": 8, "rate": _rate(0, 4), "attack": _rate(3, 4)}
    text = control_statement(below, first)
    assert "0/4 searches" in text and "optimised attack: 3/4 searches" in text
    assert "at or above" not in text
    assert "the 3 successful searches first succeeded at gradient step median 10, max 40" in text
    # random starts reproduce it as often: said so
    assert "at or above the attack" in control_statement({**below, "rate": _rate(3, 4)}, first)
    assert "skipped" in control_statement({"skipped": "--advw-control off"}, first)
