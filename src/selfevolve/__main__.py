"""``python -m selfevolve`` is the ``selfevolve`` command."""

from selfevolve.cli import main

main()
