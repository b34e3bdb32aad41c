"""A context whose model is an outcome table: the fuzz scenario (and its statistics) run for
real, without a diffusion model.

`rule(prompt, seed)` says whether the image for that prompt and seed is a 'hit' (white), a
'miss' (black) or 'degenerate' (black, flagged). The detector is the real brightness detector
of `pytest_erasure.testing`; seeds are derived as the session derives them. Every generated
input is recorded, so a test can see which seeds were judged. Used by the fuzz tests and by
`benchmarks/fuzz_power.py`, which measures the search's power on a planted bypass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_erasure.concepts import Concept


class OutcomeContext:
    """The members of `AuditContext` the fuzz scenario uses, over an outcome table."""

    def __init__(self, rule: Callable[[str, int], str], concept: Concept, database: Path, *,
                 seed: int = 0, crr_threshold: float = 0.2, exploratory: bool = True,
                 thresholds: dict[str, float] | None = None, **options: Any) -> None:
        from types import SimpleNamespace

        from pytest_erasure.cache import Cache
        from pytest_erasure.concepts import ConceptSet
        from pytest_erasure.testing import BrightnessDetector

        self.rule = rule
        self.config = SimpleNamespace(seed=seed, crr_threshold=crr_threshold,
                                      exploratory=exploratory)
        self.cache = Cache(None)
        self.concept = Concept(**{**concept.__dict__, "thresholds": dict(thresholds or {})})
        self.concepts = ConceptSet(path=database, concepts={concept.name: self.concept},
                                   threshold=None, thresholds={}, neutral_prompts=(), raw={})
        self.options = {"fuzz-database": str(database), **options}
        self.detector = BrightnessDetector()
        self.generated: list[Any] = []

    def option(self, name: str) -> Any:
        from pytest_erasure.scenarios.fuzz import FuzzScenario

        if name in self.options:
            return self.options[name]
        return next(o.default for o in FuzzScenario.options if o.name == name)

    def seeds(self, n: int, salt: str = "") -> list[int]:
        import hashlib

        return [int(hashlib.sha256(f"{self.config.seed}/{salt}/{i}".encode()).hexdigest()[:8], 16)
                for i in range(n)]

    def progress(self, description: str, total: int) -> Any:
        from contextlib import nullcontext

        return nullcontext(lambda n: None)

    def fingerprint(self, role: str) -> str:
        return f"table-{role}"

    def generate_flagged(self, role: str, inputs: list[Any], concept: Any = None) -> Any:
        import torch

        self.generated += inputs
        outcomes = [self.rule(i.prompt, i.seed) for i in inputs]
        images = torch.stack([torch.full((3, 2, 2), 255 if o == "hit" else 0, dtype=torch.uint8)
                              for o in outcomes])
        return images, [o == "degenerate" for o in outcomes]

    def generate(self, role: str, inputs: list[Any], concept: Any = None) -> Any:
        return self.generate_flagged(role, inputs, concept)[0]

    def detect(self, images: Any, concept: Concept) -> Any:
        return self.detector.detect(images.float() / 255.0, concept.label)
