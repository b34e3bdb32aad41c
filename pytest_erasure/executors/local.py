"""`--erasure-executor=local` (the default): every unit runs here, on the context's models.

This is the behaviour from before units existed: the same functions on the same pipelines, in
the caller's thread, so out-of-memory halving notes its sizes in the caller's recording
directly and progress advances the caller's bar directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.executors import Host
    from pytest_erasure.executors.units import Unit


class LocalExecutor:
    name = "local"

    def __init__(self, config: AuditConfig, local: Host) -> None:
        self.host = local

    def run(self, unit: Unit, advance: Callable[[int], None]) -> Any:
        from pytest_erasure.executors.units import execute

        return execute(unit, self.host, advance)

    def close(self) -> None:
        pass
