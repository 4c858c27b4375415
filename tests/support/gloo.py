"""Joining a gloo process group on this machine, for the tests that spawn ranks (tests/distributed/)."""

from __future__ import annotations

import os
import socket
import sys

import torch.distributed as dist

__all__ = ["ROOT", "free_port", "join"]

#: The repository root: spawned ranks import the examples from it.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, world: int, port: int) -> None:
    """Make the repository importable and join the gloo group of `world` ranks at `port` as `rank`."""
    sys.path.insert(0, ROOT)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
