"""The one exception a user's input can cause.

Everything that a user can fix (a path, a file, an option) raises `ErasureInputError`; the plugin
turns it into a one-line `pytest.UsageError` (exit code 4) so no traceback reaches the user.
"""

from __future__ import annotations


class ErasureInputError(ValueError):
    """Bad user input; the message names the input and the fix."""

    def __init__(self, what: str, problem: str, fix: str) -> None:
        self.what, self.problem, self.fix = what, problem, fix
        super().__init__(f"{what}: {problem}; {fix}")
