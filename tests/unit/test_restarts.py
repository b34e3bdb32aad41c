"""Attack restarts (--attack-restarts) and the cluster id of every planned sample."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pytest_erasure.errors import ErasureInputError

torch = pytest.importorskip("torch")

TI = {"ti-steps": 3, "ti-batch-size": 3, "ti-lr": 1e-2, "ti-train-images": 2}
RAB = {"rab-population": 6, "rab-generations": 2, "rab-tokens": 3, "rab-keep": 2}


def context(world: dict[str, Path], cache: Path | None, **options):
    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    standard = _shift_output(tiny_pipeline(0), 0.6)
    erased = _shift_output(tiny_pipeline(0), -0.6)
    return context_for_pipelines(standard, erased, world["concepts"], cache, steps=2,
                                 samples=6, batch_size=8, exploratory=True,
                                 scenario_options={**TI, **RAB, **options})


@pytest.fixture()
def trained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seed of every textual inversion actually trained."""
    import pytest_erasure.attacks.textual_inversion as ti

    seeds: list[int] = []
    real = ti.train_textual_inversion

    def spy(*args, **kwargs):
        seeds.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ti, "train_textual_inversion", spy)
    return seeds


@pytest.fixture()
def searched(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seed of every Ring-A-Bell search actually run."""
    import pytest_erasure.attacks.ring_a_bell as rab

    seeds: list[int] = []
    real = rab.ring_a_bell

    def spy(*args, **kwargs):
        seeds.append(args[4].seed)  # (encoder, tokenizer, target, pairs, settings)
        return real(*args, **kwargs)

    monkeypatch.setattr(rab, "ring_a_bell", spy)
    return seeds


def test_one_restart_is_the_single_run_of_before(tiny_world: dict[str, Path], tmp_path: Path,
                                                  trained: list[int]):
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.scenarios.embedding import concept_images

    scenario = registry()["embedding-white"]
    ctx = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 1})
    circle = ctx.concepts.concepts["circle"]
    plan = scenario.plan(ctx, circle, "erased", 5)
    # The seed and the cache key the single run always had.
    seed = ctx.seeds(1, "textual-inversion/circle")[0]
    assert trained == [seed] and plan.facts["seed"] == seed
    images, _ = concept_images(ctx, circle, TI["ti-train-images"])
    key = scenario.learn_key(ctx, "erased", images, scenario.budget(ctx), "<circle>", seed)
    assert ctx.cache.path("textual-inversion", key).is_file()
    # Today's inputs: the case's seeds, cycling the prompts, one learned token.
    prompts = [p.replace("{concept}", "<circle>") for p in circle.prompts]
    assert [i.seed for i in plan.inputs] == ctx.seeds(5, "embedding/circle")
    assert [i.label for i in plan.inputs] == \
        [f"learned token: {prompts[i % len(prompts)]}" for i in range(5)]
    assert [i.cluster for i in plan.inputs] == ["restart-0"] * 5
    assert [i.stratum for i in plan.inputs] == \
        [f"prompt: {prompts[i % len(prompts)]}" for i in range(5)]
    assert set(plan.artifacts) == {"embedding"}
    assert plan.facts["input_restarts"] == [0] * 5 and len(plan.facts["attack_runs"]) == 1

    # Three restarts on the same cache: restart 0 is that run, two more are trained.
    more = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 3})
    again = scenario.plan(more, more.concepts.concepts["circle"], "erased", 7)
    assert len(trained) == 3 and trained[0] == seed and len(set(trained)) == 3
    assert again.facts["seed"] == seed
    assert torch.equal(again.inputs[0].prompt_embeds, plan.inputs[0].prompt_embeds)


def test_restarts_train_distinct_cached_embeddings_spread_round_robin(
        tiny_world: dict[str, Path], tmp_path: Path, trained: list[int]):
    from pytest_erasure.scenarios.base import registry

    scenario = registry()["embedding-white"]
    ctx = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 3})
    circle = ctx.concepts.concepts["circle"]
    plan = scenario.plan(ctx, circle, "erased", 8)
    facts = plan.facts
    assert len(trained) == 3 and len(set(trained)) == 3
    assert [r["seed"] for r in facts["attack_runs"]] == trained
    assert [r["id"] for r in facts["attack_runs"]] == ["restart-0", "restart-1", "restart-2"]
    assert facts["attack_restarts"] == 3
    files = [r["embedding"] for r in facts["attack_runs"]]
    assert len(set(files)) == 3 and all(Path(f).is_file() for f in files)
    assert plan.artifacts == {"embedding": files[0], "embedding-restart-1": files[1],
                              "embedding-restart-2": files[2]}
    assert all(isinstance(r["final_loss"], float) for r in facts["attack_runs"])
    # Round-robin: sample i belongs to restart i mod 3; each restart gets the case's 8 samples
    # (it is judged on its own images) and cycles the prompts.
    assert facts["input_restarts"] == [i % 3 for i in range(24)]
    assert Counter(facts["input_restarts"]) == {0: 8, 1: 8, 2: 8}
    prompts = facts["prompts"]
    assert [i.cluster for i in plan.inputs] == [f"restart-{i % 3}" for i in range(24)]
    assert [i.stratum for i in plan.inputs] == \
        [f"prompt: {prompts[(i // 3) % len(prompts)]}" for i in range(24)]
    # Different restarts feed different embeddings; the same restart the same one.
    assert not torch.equal(plan.inputs[0].prompt_embeds, plan.inputs[1].prompt_embeds)
    assert torch.equal(plan.inputs[0].prompt_embeds,
                       scenario.encode(ctx, "erased", prompts, "<circle>",
                                       _load(files[0]))[prompts[0]])
    assert torch.equal(plan.inputs[1].prompt_embeds,
                       scenario.encode(ctx, "erased", prompts, "<circle>",
                                       _load(files[1]))[prompts[0]])

    rerun = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 3})
    again = scenario.plan(rerun, rerun.concepts.concepts["circle"], "erased", 8)
    assert len(trained) == 3 and rerun.cache.misses == 0  # a rerun trains none
    assert again.facts == plan.facts and again.artifacts == plan.artifacts
    # Fewer samples than restarts: every restart still runs, each with its own samples.
    few = scenario.plan(rerun, rerun.concepts.concepts["circle"], "erased", 2)
    assert few.facts["attack_restarts"] == 3 and len(few.inputs) == 6 and len(trained) == 3


def _load(path: str) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(path)["<circle>"]


def test_ring_a_bell_restarts(tiny_world: dict[str, Path], tmp_path: Path, searched: list[int]):
    from pytest_erasure.scenarios.base import registry

    scenario = registry()["adversarial-black"]
    ctx = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 1})
    circle = ctx.concepts.concepts["circle"]
    single = scenario.plan(ctx, circle, "erased", 5)
    assert searched == [ctx.config.seed]  # restart 0 searches with the seed it always had
    found = single.facts["prompts"]
    assert [i.prompt for i in single.inputs] == [found[i % len(found)] for i in range(5)]
    assert [(i.cluster, i.stratum) for i in single.inputs] == [
        ("restart-0", f"prompt: {i.prompt}") for i in single.inputs]
    assert single.facts["attack_runs"][0]["prompts"] == found

    ctx = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 3})
    plan = scenario.plan(ctx, ctx.concepts.concepts["circle"], "erased", 7)
    assert len(searched) == 3 and len(set(searched)) == 3  # restart 0 from the cache
    restarts = plan.facts["attack_runs"]
    assert [r["seed"] for r in restarts] == searched
    assert restarts[0]["prompts"] == found and plan.facts["searches"] == single.facts["searches"]
    assert plan.facts["input_restarts"] == [i % 3 for i in range(21)]  # 7 per restart
    for i, item in enumerate(plan.inputs):
        own = restarts[i % 3]["prompts"]
        assert item.prompt == own[(i // 3) % len(own)]
        assert (item.cluster, item.stratum) == (f"restart-{i % 3}", f"prompt: {item.prompt}")
    assert set(plan.facts["prompts"]) == {p for r in restarts for p in r["prompts"]}
    assert [i.seed for i in plan.inputs] == ctx.seeds(21, "adversarial-black:circle")
    scenario.plan(ctx, ctx.concepts.concepts["circle"], "standard", 7)
    assert len(searched) == 3  # the standard target asks the same cached searches


def test_restarts_below_one_are_a_usage_error(tiny_world: dict[str, Path]):
    from pytest_erasure.scenarios.base import registry

    ctx = context(tiny_world, None, **{"attack-restarts": 0})
    for name in ("embedding-white", "embedding-black", "adversarial-black"):
        with pytest.raises(ErasureInputError, match="--attack-restarts"):
            registry()[name].validate(ctx)


def test_every_scenario_says_what_is_drawn_and_what_is_declared(tiny_world: dict[str, Path],
                                                                tmp_path: Path):
    """Declared prompts are strata, attack runs, searched prompts and references clusters
    (`design`): every input names one or the other."""
    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.scenarios.text import prompt_plan

    ctx = context(tiny_world, tmp_path / "cache", **{"attack-restarts": 2, "fuzz-examples": 2,
                                                     "fuzz-seeds-per-prompt": 2,
                                                     "fuzz-max-prompts": 3,
                                                     "completion-steps": "1"})  # 2-step world
    circle = ctx.concepts.concepts["circle"]
    planned = registry()
    assert {"text", "embedding-white", "embedding-black", "adversarial-black", "fuzz"} <= \
        set(planned)
    for name, scenario in planned.items():
        plan = scenario.plan(ctx, circle, "erased", 4)
        assert plan.inputs, name
        assert all(i.cluster or i.stratum for i in plan.inputs), name
        if name.startswith("latent"):  # declared references: one cluster each
            assert [i.cluster for i in plan.inputs] == \
                [f"reference-{i}" for i in range(len(plan.inputs))], name
        elif name in ("inpainting-probe", "image-white"):  # a reference each, cycling them
            assert all(i.cluster.startswith("reference-") and i.stratum for i in plan.inputs)
        elif name.startswith("adversarial-white"):  # searches: strata of the declared prompt
            declared = {f"prompt: {t}" for t in circle.texts()}
            assert all(i.stratum in declared and not i.cluster for i in plan.inputs), name
        elif name.startswith(("embedding", "adversarial", "finetune")) or name.endswith(
                "-embedding"):  # the quantized models' embedding cases too
            assert {i.cluster for i in plan.inputs} == {"restart-0", "restart-1"}
            assert all(i.stratum.startswith("prompt: ") for i in plan.inputs), name
        elif name == "fuzz":  # searched prompts: the search's draws
            assert all(i.cluster == f"prompt: {i.prompt}" for i in plan.inputs), name
        else:
            assert all(i.stratum == f"prompt: {i.prompt}" and not i.cluster
                       for i in plan.inputs), name
    # Retention and the base rate use prompt_plan: one stratum per prompt, the empty one too.
    base = prompt_plan(ctx, ["a shape", ""], 5, "neutral")
    assert [i.stratum for i in base.inputs] == ["prompt: a shape", "prompt: "] * 2 + \
        ["prompt: a shape"]


def test_latent_references_are_clusters_and_generated_ones_strata_of_their_prompts():
    from pytest_erasure.scenarios.latent import reference_draws

    assert [d["cluster"] for d in reference_draws({"source": "references", "count": 3}, 3)] == \
        ["reference-0", "reference-1", "reference-2"]
    generated = {"source": "generated by the standard model (no references declared)",
                 "prompts": ["a x", "a red x"], "count": 3}
    assert reference_draws(generated, 3) == [
        {"cluster": "", "stratum": s} for s in ("prompt: a x", "prompt: a red x", "prompt: a x")]


def test_a_case_records_every_restarts_crr_and_attack_run(tiny_world: dict[str, Path],
                                                          tmp_path: Path):
    """Through the session: per-restart CRRs (facts["restarts"], from the cluster ids) beside
    the scenario's own record of each run (facts["attack_runs"]), neither hiding the other."""
    from pytest_erasure.session import session_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    session = session_for_pipelines(_shift_output(tiny_pipeline(0), 0.6),
                                    _shift_output(tiny_pipeline(0), -0.6),
                                    tiny_world["concepts"], tmp_path / "cache", steps=2,
                                    samples=6, batch_size=8,
                                    scenario_options={**TI, "attack-restarts": 2})
    case = next(c for c in session.cases() if c.id == "circle-embedding-white")
    facts = session.run(case).facts
    assert [r["id"] for r in facts["attack_runs"]] == ["restart-0", "restart-1"]
    assert set(facts["restarts"]["per_restart"]) == {"restart-0", "restart-1"}
    assert all(rate["n"] == 6 for rate in facts["restarts"]["per_restart"].values())
    per = facts["restarts"]["per_restart"]
    worst = max(per, key=lambda r: (per[r]["crr"], -int(r.split("-")[1])))  # ties: the earlier
    assert facts["restarts"]["worst_restart"] == worst
    assert facts["restarts"]["worst"] == per[worst]
