"""Fail fast when the Hugging Face Hub cannot be reached.

Without a network, ``huggingface_hub`` (and ``transformers`` above it) spend tens of seconds
per load retrying requests that cannot succeed. :func:`offline_unless_reachable` probes the
Hub's host (DNS lookup and a TCP connect, ``timeout`` seconds at most; the answer is kept
for ``PROBE_TTL_S``, so a notebook notices when the network comes back); when
it cannot be reached, the ``with`` block runs in ``huggingface_hub``'s offline mode: cached
files still load, and a missing file fails at once (``LocalEntryNotFoundError``), so the
caller's own message comes within seconds. The previous mode is restored on exit.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 2.0
PROBE_TTL_S = 60.0
_probes: dict[str, tuple[float, bool]] = {}  # endpoint -> (monotonic time, reachable)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint's host opens within ``timeout`` s."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    seen = _probes.get(endpoint)
    if seen is not None and time.monotonic() - seen[0] < PROBE_TTL_S:
        return seen[1]
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            reachable = True
    except OSError:
        reachable = False
    _probes[endpoint] = (time.monotonic(), reachable)
    return reachable


def forget_probes() -> None:
    """Probe again on the next call (tests, or after the network changed)."""
    _probes.clear()


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the block in offline mode when the Hub cannot be reached; yields whether it is."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield bool(constants.HF_HUB_OFFLINE)
        return
    constants.HF_HUB_OFFLINE = True
    reset_sessions()  # new sessions refuse every request instead of retrying it
    try:
        yield True
    finally:
        constants.HF_HUB_OFFLINE = False
        reset_sessions()
