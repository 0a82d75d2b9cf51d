"""The one exception type users see: its message is a single line saying what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input (config, URL, file, argument). The CLI prints it as one line and exits non-zero."""
