"""The one exception type that user mistakes raise: the CLI prints it as a single line, never a traceback."""


class SelfEvolveError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""
