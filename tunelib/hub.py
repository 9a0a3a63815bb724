"""The Hugging Face Hub: whether it can be reached, and offline mode when it cannot.

huggingface_hub retries a request that cannot connect five times with growing pauses (about
35 s), logging each retry. With no network a command should say so at once instead: in
offline mode `datasets` and `huggingface_hub` take what the local cache holds and fail at
once for the rest, which the caller turns into one line.

    if go_offline_unless_reachable():
        ...  # only cached Hub files can be used
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_SECONDS = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def is_offline() -> bool:
    """True when huggingface_hub is in offline mode (HF_HUB_OFFLINE=1, or set by this module)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def reachable(timeout: float = PROBE_SECONDS) -> bool:
    """True when a connection to the Hub's host (HF_ENDPOINT) opens within `timeout` seconds.

    Behind a proxy the Hub is only reached through it, which this test cannot see: it then
    says True and leaves the answer to huggingface_hub.
    """
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:  # no route, no DNS, refused, timed out
        return False
    return True


def go_offline_unless_reachable() -> bool:
    """Put huggingface_hub and datasets in offline mode when the Hub cannot be reached.

    Returns:
        True when this process is offline now (it was set so, or the Hub was not reachable).
    """
    if is_offline():
        return True
    if reachable():
        return False
    import datasets.config
    from huggingface_hub import constants

    # Both libraries read these when they make a request, so the switch holds from here on.
    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    return True
