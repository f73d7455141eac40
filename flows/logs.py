"""Stage log lines (`prvr.*` loggers) in the Prefect run logs and the terminal.

Prefect hands the loggers named in PREFECT_LOGGING_EXTRA_LOGGERS its API handler but not a level,
so they keep the root's WARNING and every INFO line of a stage ("resuming ... from epoch-0021.pt")
was dropped before any handler saw it. They get the level Prefect's own extra loggers have.
"""

from __future__ import annotations

import logging


def give_extra_loggers_a_level() -> None:
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS

    ensure_logging_setup()  # gives the extra loggers their handler; a level is ours to give
    level = logging.getLogger("prefect.extra").level  # PREFECT_LOGGING_LEVEL, INFO by default
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value():
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # a level set on purpose stays
            logger.setLevel(level)
