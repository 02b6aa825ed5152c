"""A TCP port nobody listens on, for a test's torchrun rendezvous: the suite runs in several worker
processes at once (and a developer's machine runs other things), so a fixed port may be taken."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS just handed out on 127.0.0.1 and released (free unless taken within moments)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
