"""The test suite never reaches the network (issue 23).

Two layers, both installed by tests/conftest.py before any test module imports transformers:
- the Hugging Face stack's own offline switches (pqt_compile.tools.offline.OFFLINE_ENV), so a
  library that would download raises its offline error at once;
- a guard on Python sockets: a connection or a name lookup for a host other than this machine
  raises `NetworkAccessInTests` naming the host, instead of waiting for a timeout. Loopback stays
  open (the gloo process groups and their TCP store use it). Subprocesses inherit the environment
  variables, not the guard.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

from pqt_compile.tools.offline import hub_offline

__all__ = ["NetworkAccessInTests", "install", "is_local_host"]

_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "0.0.0.0", "::"}


class NetworkAccessInTests(RuntimeError):
    """A test tried to reach another machine. Not an OSError, so that no library's network-error
    handling retries it or turns it into a timeout."""


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    return frozenset({socket.gethostname().lower(), socket.getfqdn().lower()})


def is_local_host(host: Any) -> bool:
    """Whether `host` (a name, an address, or None) is this machine."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").lower()
    if host in _LOCAL_NAMES or host in _own_names():
        return True
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")


def _refuse(host: Any) -> None:
    raise NetworkAccessInTests(
        f"a test tried to reach {host!r}: the suite must not use the network (tests/support/hermetic.py). "
        "Build the model or data in the test (tests/models.py, tests/support/moe_models.py), load local "
        "files with local_files_only=True, or pass the engine's offline option (e.g. transformers' "
        "Mxfp4Config(dequantize=True))")


def install() -> None:
    """Turn hub access off (forced) and guard this process's sockets. Idempotent."""
    hub_offline(force=True)
    if getattr(socket.socket.connect, "_pqt_guard", False):
        return
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _check_address(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if not is_local_host(address[0]):
                _refuse(address[0])

    def connect(self: socket.socket, address: Any) -> None:
        _check_address(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check_address(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_local_host(host):
            _refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    connect._pqt_guard = True  # type: ignore[attr-defined]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
