"""The one exception type that user mistakes raise: the CLI prints it as a single line, never a traceback."""


class SelfEvolveError(ValueError):
    """A problem the user can fix; the message says what was passed, why it is invalid and what to do.

    A ``ValueError``, so code that catches bad values (``except ValueError``) catches these too."""
