"""The one exception type users see: a single line saying what is wrong and what to do."""


class EmbedpipeError(Exception):
    """Bad input or state the user can fix. The CLI prints it as one line and exits non-zero."""
