"""PassManager: pqt_compile's passes in order, handed to Inductor as one custom pass."""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from .base import PQTPass

__all__ = ["PassManager"]


class PassManager(PQTPass):
    """Runs its passes in list order; its uuid covers each pass's uuid, in order."""

    name = "pqt_pass_manager"

    def __init__(self, passes: list[PQTPass]) -> None:
        super().__init__()
        self.passes = list(passes)

    def __call__(self, graph: torch.fx.Graph) -> None:
        for p in self.passes:
            p(graph)

    def uuid(self) -> Optional[str]:
        ids = [p.uuid() for p in self.passes]
        if any(i is None for i in ids):  # a pass that must not be cached (NOTE [recording])
            return None
        return hashlib.sha256("|".join(ids).encode()).hexdigest()  # type: ignore[arg-type]
