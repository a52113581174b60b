"""Fail fast when the Hugging Face Hub cannot be reached.

Without a network, ``huggingface_hub`` (and ``transformers`` above it) spend tens of seconds
per load retrying requests that cannot succeed. :func:`offline_unless_reachable`:

1. probes the Hub's host: DNS lookup and a TCP connect in a helper thread, given
   ``PROBE_TIMEOUT_S`` in all; the answer is kept for ``PROBE_TTL_S`` (a notebook notices
   when the network comes back). Behind a proxy (``HTTPS_PROXY``) no probe is made: only the
   proxy knows;
2. when the Hub cannot be reached, runs the ``with`` block in ``huggingface_hub``'s offline
   mode (``constants.HF_HUB_OFFLINE``, new HTTP sessions refuse every request): cached files
   still load, a missing one fails at once (``LocalEntryNotFoundError``), so the caller's own
   message comes within seconds. Blocks in several threads share one switch: the first to
   enter sets it, the last to leave restores the value it found.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 2.0
PROBE_TTL_S = 60.0
_probes: dict[str, tuple[float, bool]] = {}  # endpoint -> (monotonic time, reachable)
_lock = threading.Lock()
_depth = 0  # blocks inside offline mode that this module switched on
_saved = False  # the HF_HUB_OFFLINE value found by the first of them


def _connects(host: str, port: int, timeout: float) -> bool:
    """DNS + TCP connect, the whole of it bounded by ``timeout`` (DNS has no timeout of its
    own, so it runs in a daemon thread that is abandoned when late)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub endpoint's host answers within ``timeout`` s (step 1)."""
    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = constants.ENDPOINT
    seen = _probes.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < PROBE_TTL_S:
        return seen[1]
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    reachable = _connects(url.hostname or "", port, timeout)
    _probes[endpoint] = (time.monotonic(), reachable)
    return reachable


def forget_probes() -> None:
    """Probe again on the next call (tests, or after the network changed)."""
    _probes.clear()


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the block offline when the Hub cannot be reached (step 2); yields whether the
    block runs offline."""
    global _depth, _saved
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    with _lock:
        switched_by_us = _depth > 0
    if not switched_by_us and (constants.HF_HUB_OFFLINE or hub_reachable()):
        yield bool(constants.HF_HUB_OFFLINE)
        return
    with _lock:
        if _depth == 0:
            _saved = constants.HF_HUB_OFFLINE
            constants.HF_HUB_OFFLINE = True
            reset_sessions()  # new sessions refuse every request instead of retrying it
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                constants.HF_HUB_OFFLINE = _saved
                reset_sessions()
