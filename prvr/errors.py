"""The root of every error a user can act on, and the one way a list of problems is written.

A `UserError` says what is wrong with the user's input, data or machine and what to do; the
CLI prints its message and exits 2, without a traceback. Anything else is a bug and keeps its
traceback. The concrete errors keep their old bases too (ValueError, RuntimeError, ...), so code
that caught those still does. This module imports nothing of prvr: every layer may import it.
"""

from __future__ import annotations

MAX_LISTED = 50  # problems shown in one message; the rest are counted


class UserError(Exception):
    """A problem the user can fix: bad input, missing or damaged data, a busy store."""


class UsageError(UserError, ValueError):
    """An argument or setting out of its range (a bad preset name, too few steps, an unknown split)."""


def problem_list(title: str, problems: list[str], limit: int = MAX_LISTED) -> str:
    """`title:` then one problem per line, at most `limit` of them, then how many more there are."""
    shown = problems[:limit]
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{title}:\n  - " + "\n  - ".join(shown) + more
