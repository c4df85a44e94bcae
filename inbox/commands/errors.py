"""Expected failures of a command: one line on stderr, a non-zero exit code, no traceback."""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_DATABASE = 2


class CliError(Exception):
    """An expected failure: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(one_line(message))
        self.code = code


def one_line(message: str) -> str:
    """libpq's messages span lines ('...\n\tIs the server running...'); an error here is one line."""
    return " ".join(message.split())
