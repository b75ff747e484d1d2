"""Small pieces the subcommands share."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Keep transformers' and torch's warnings out of the user's terminal (errors still show)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
