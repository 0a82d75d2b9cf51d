"""The one exception type users see: its message is a single line saying what is wrong and how to fix it."""

import sys


class UserError(Exception):
    """Bad input (config, URL, file, argument). The CLI prints it as one line and exits non-zero."""


def print_error(error: Exception) -> None:
    """`nca-scale: error: ...` on stderr in one write: with several ranks on one pipe (and PYTHONUNBUFFERED, where
    print() writes the text and its newline separately) their lines would otherwise run together."""
    sys.stderr.write(f"nca-scale: error: {error}\n")
    sys.stderr.flush()
