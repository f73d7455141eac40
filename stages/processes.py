"""Child processes whose life ends with their parent's (Linux parent-death signal).

A child that hangs (a decoder loop) or serves forever (a local API server) does not
notice on its own that its parent was killed; asked with PR_SET_PDEATHSIG, the
kernel signals it when the parent goes. The signal is tied to the parent *thread*
that started the child, so start such children from a thread that lives as long as
they should (the main thread, or a pool's own dispatcher thread).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from typing import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux; elsewhere a no-op).

    Exits at once if the parent (`parent_pid`) died before the request took effect.
    """
    prctl = _prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def bound_to_this_process(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen: the child (and the program it executes, since
    the request survives exec) gets `sig` when this process dies. None where unsupported.

    libc is looked up here, in the parent, so the child only makes the one system call.
    """
    if _prctl() is None:
        return None
    return functools.partial(die_with_parent, os.getpid(), sig)
