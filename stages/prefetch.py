"""A bounded read-ahead: items made in a background thread while the caller computes on the
previous ones, handed over in order, then moved to the device (pinned, non-blocking on CUDA).

Memory is bounded by `depth` made items: the queue blocks the maker when the caller lags.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch

Item = TypeVar("Item")
_DONE = object()


def to_device(value: Any, device: torch.device | str, pin: bool = False) -> Any:
    """A tensor, a tuple / list / dict of them, or an object with its own `to_device` (a batch), on `device`."""
    if hasattr(value, "to_device"):
        return value.to_device(device, pin)
    if isinstance(value, torch.Tensor):
        if pin and value.device.type == "cpu":
            value = value.pin_memory()
        return value.to(device, non_blocking=pin)
    if isinstance(value, dict):
        return {k: to_device(v, device, pin) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device, pin) for v in value)
    return value


def prefetched(make: Callable[[Item], Any], items: Iterable[Item], depth: int,
               device: torch.device | str = "cpu") -> Iterator[Any]:
    """make(item) for each item, in order, up to `depth` ahead in a thread (0: in the caller's thread)."""
    pin = torch.device(device).type == "cuda"
    if depth <= 0:
        for item in items:
            yield to_device(make(item), device, pin)
        return
    made: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                value = (make(item), None)
                while not stop.is_set():
                    try:
                        made.put(value, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the caller, raised there with its traceback
            made.put((None, e))
            return
        made.put((_DONE, None))

    thread = threading.Thread(target=work, name="prvr-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value, error = made.get()
            if error is not None:
                raise error
            if value is _DONE:
                return
            yield to_device(value, device, pin)
    finally:
        stop.set()
        while thread.is_alive():  # unblock a maker waiting on a full queue, then let it end
            try:
                made.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
