"""The one exception the CLI turns into a message and a non-zero exit (no traceback)."""

from __future__ import annotations


class HelperError(Exception):
    """A failure the user can act on: the message names the thing and says the fix."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
