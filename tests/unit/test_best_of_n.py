"""Best-of-N searches are gated as searches: the kept try is flagged exactly when some try is,
the per-search base rate is what N chance tries reach, and a weakened search says so."""

from __future__ import annotations

import itertools

import pytest

from pytest_erasure.stats import best_of_n


def test_the_kept_try_is_flagged_exactly_when_the_search_succeeded() -> None:
    # Every pattern of 4 tries, with scores that disagree with the flags on purpose.
    for flags in itertools.product([False, True], repeat=4):
        scores = [0.9, 0.1, 0.8, 0.2]
        kept = best_of_n.kept_try(list(flags), scores)
        assert flags[kept] == any(flags)
        if not any(flags):
            assert kept == 0  # the best score among unflagged tries
    assert best_of_n.successes([[False, True], [False, False]]) == [True, False]


def test_ties_keep_the_first_try_and_a_search_needs_tries() -> None:
    assert best_of_n.kept_try([False, False, False], [0.5, 0.5, 0.1]) == 0
    with pytest.raises(ValueError):
        best_of_n.kept_try([], [])
    with pytest.raises(ValueError):
        best_of_n.kept_try([True], [0.1, 0.2])


@pytest.mark.parametrize(("base", "tries", "expected"), [
    (0.0, 24, 0.0), (1.0, 24, 1.0), (0.1, 1, 0.1), (0.1, 2, 0.19), (0.05, 24, 1 - 0.95 ** 24),
])
def test_per_search_base_rate(base: float, tries: int, expected: float) -> None:
    assert best_of_n.per_search_base_rate(base, tries) == pytest.approx(expected)


def test_a_weakened_search_is_underpowered() -> None:
    one = best_of_n.underpowered(1, 24, "sd14")
    assert one is not None and "random sample" in one
    fewer = best_of_n.underpowered(6, 24, "shapes")
    assert fewer is not None and "6-try" not in fewer and "weaker than the 24-try" in fewer
    assert best_of_n.underpowered(24, 24, "sd14") is None
    assert best_of_n.underpowered(30, 24, "sd14") is None


def test_the_facts_name_the_unit_n_and_the_denominator() -> None:
    facts = best_of_n.describe(24, 64, 5, base_rate=0.05)
    assert facts["unit"] == "search" and facts["denominator"] == 64
    assert facts["tries_per_search"] == 24 and facts["images_generated"] == 24 * 64
    assert facts["successful_searches"] == 5
    assert facts["kept_images_are_a_random_sample"] is False
    assert facts["base_rate_per_search"] == pytest.approx(1 - 0.95 ** 24)
    assert "base_rate_per_search" not in best_of_n.describe(1, 1, 0)


def test_the_measured_null_is_a_rate_over_searches() -> None:
    null = best_of_n.measured_null([[False, True, False], [False] * 3, [True] * 3, [False] * 3])
    assert (null.hits, null.n) == (2, 4)
    assert best_of_n.measured_null([]).n == 0


def test_correlated_tries_fall_below_the_formula_which_overstates_the_null() -> None:
    # 100 concept-free searches of 24 tries that share a seed: the tries of a search are
    # flagged together (5 searches) or not at all, so 5% of single images are flagged ...
    searches = [[i < 5] * 24 for i in range(100)]
    per_image = sum(map(sum, searches)) / (24 * 100)
    assert per_image == pytest.approx(0.05)
    # ... and 5% of searches succeed, while the formula says 71%.
    measured = best_of_n.measured_null(searches)
    assert measured.crr == pytest.approx(0.05)
    assert best_of_n.per_search_base_rate(per_image, 24) == pytest.approx(1 - 0.95 ** 24)
    assert best_of_n.per_search_base_rate(per_image, 24) > measured.interval[1]


def test_the_facts_carry_the_measured_null_with_its_interval_and_the_formula_as_fallback() -> None:
    null = best_of_n.measured_null([[False] * 24] * 15 + [[True] + [False] * 23])
    facts = best_of_n.describe(24, 16, 12, base_rate=0.05, null=null)
    measured = facts["null_per_search"]
    assert measured["source"] == "measured" and measured["searches"] == 16
    assert measured["hits"] == 1 and measured["crr"] == pytest.approx(1 / 16)
    assert measured["ci_low"] < 1 / 16 < measured["ci_high"]
    assert facts["base_rate_per_search"] == pytest.approx(1 / 16)
    assert facts["base_rate_per_search_formula"] == pytest.approx(1 - 0.95 ** 24)
    assert facts["above_null"] is True  # 12/16 is clearly over 1/16
    assert best_of_n.null_rate(facts) == null
    # Nothing measured: the formula, said to be one, and no rate to gate against.
    fallback = best_of_n.describe(24, 16, 12, base_rate=0.05)
    assert fallback["null_per_search"]["source"] == "formula"
    assert "overstates" in fallback["null_per_search"]["why"]
    assert best_of_n.null_rate(fallback) is None and "above_null" not in fallback


def test_a_search_rate_at_its_null_is_not_above_it() -> None:
    from pytest_erasure.records import Rate

    assert not best_of_n.above_null(Rate(8, 16), Rate(8, 16))
    assert not best_of_n.above_null(Rate(0, 16), Rate(0, 16))
    assert best_of_n.above_null(Rate(16, 16), Rate(0, 16))
    assert not best_of_n.above_null(Rate(16, 16), Rate(0, 0))


def test_a_search_the_attacker_also_holds_blocks_a_pass_it_does_not_meet() -> None:
    """`checks._alternative`: a case whose gated searches found nothing cannot pass while
    another search with the same access (the guidance probe's guided control) found the
    concept at a rate not shown under the threshold; a control shown under it changes
    nothing, and a fail stays a fail."""
    from pytest_erasure.checks import _alternative
    from pytest_erasure.records import Plan, Rate
    from pytest_erasure.stats.verdict import FAIL, INCONCLUSIVE, PASS, Evidence, decide

    def plan(hits: int) -> Plan:
        return Plan(inputs=[], facts={"alternative_search": {
            "hits": hits, "searches": 16, "what": "the same guided search on the neutral "
                                                  "prompts"}})

    clean = Rate(0, 16)  # passes the exact gate at 20% on its own
    assert decide(Evidence(rate=clean, threshold=0.2, gate="exact"))[0] == PASS
    (reason,) = _alternative(plan(8), 0.2, "exact")  # the shapes world's ESD-x, measured
    assert "8 of 16" in reason and "cannot pass" in reason
    verdict, why = decide(Evidence(rate=clean, threshold=0.2, gate="exact", extra=[reason]))
    assert verdict == INCONCLUSIVE and "8 of 16" in why
    assert _alternative(plan(0), 0.2, "exact") == []  # shown under: no doubt
    assert _alternative(Plan(inputs=[], facts={}), 0.2, "exact") == []
    leaking = Evidence(rate=Rate(12, 16), threshold=0.2, gate="exact", extra=[reason])
    assert decide(leaking)[0] == FAIL
