"""Keys (one stable 32-bit id per weight) and seeds (one fresh value per training call).

A weight's key is a hash of its qualified name (`blake2b`, 4 bytes, little-endian): stable
across processes, runs and machines, unlike Python's `hash`. The compiled path and the eager
reference derive it the same way.

The seed of a training call is a pure function of the run's base seed and a call counter,
so a run is reproducible from `manual_seed`; `fixed_seed` pins it for comparisons with the
eager reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Iterator, Optional

__all__ = ["key_for_name", "manual_seed", "fixed_seed", "next_seed", "rank_seed", "seed_state", "set_seed_state", "PQTState"]


def key_for_name(name: str) -> int:
    """The 32-bit key of the weight with qualified name `name` (e.g. "h.0.attn.c_attn.weight")."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"pqt: a weight key needs a non-empty qualified name, got {name!r}")
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest(), "little")


def _mix64(x: int) -> int:
    # splitmix64 finaliser: the per-call seed must not be a simple offset of the previous one.
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF  # fits int64


class _SeedState(threading.local):
    def __init__(self) -> None:
        self.base: int = 0
        self.counter: int = 0
        self.fixed: Optional[int] = None


_state = _SeedState()


def manual_seed(seed: int) -> None:
    """Restart the stream of per-call seeds from `seed` (a run with the same seed is identical)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"pqt: manual_seed needs an int, got {seed!r}")
    _state.base, _state.counter = seed, 0


def next_seed(base_offset: int = 0) -> int:
    """The seed of the next training call (advances the counter unless a seed is pinned)."""
    if _state.fixed is not None:
        return _state.fixed
    _state.counter += 1
    return _mix64(_mix64(_state.base + base_offset) ^ _state.counter)


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank `rank` uses for a call seeded `seed` under `PQTConfig(per_rank_noise=True)`
    (pass it to `reference.run(..., seed=rank_seed(seed, rank))` to reproduce that rank)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"pqt: a rank is an int >= 0, got {rank!r}")
    return _mix64(seed ^ _mix64(0x632BE59BD9B4E019 + rank))


@contextlib.contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Pin the seed of every compiled call inside the block to `seed` (nesting restores)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"pqt: fixed_seed needs an int, got {seed!r}")
    previous, _state.fixed = _state.fixed, seed
    try:
        yield
    finally:
        _state.fixed = previous


def seed_state() -> dict[str, int]:
    """The seed stream's position, to save with a checkpoint."""
    return {"base": _state.base, "counter": _state.counter}


def set_seed_state(state: dict[str, int]) -> None:
    """Restore a position saved by `seed_state`."""
    try:
        _state.base, _state.counter = int(state["base"]), int(state["counter"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"pqt: not a seed state (expected keys 'base' and 'counter'): {state!r}") from e


class PQTState:
    """The PQT seed stream as a checkpointable object (`state_dict` / `load_state_dict`).

    Put it in the state you checkpoint (e.g. torch.distributed.checkpoint's app state, or next
    to the model and optimizer state dicts) so that a resumed run draws exactly the noise the
    uninterrupted run would have drawn. Loading state saved with another PQT config is refused:
    the noise stream would otherwise change silently.
    """

    def __init__(self, config: object) -> None:
        self.config = config

    def state_dict(self) -> dict:
        return {**seed_state(), "config": repr(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "counter" not in state:
            raise ValueError("pqt: this checkpoint holds no PQT seed state; resuming would reseed the noise")
        saved = state.get("config")
        if _parse_config(saved) != self.config:
            raise ValueError(
                f"pqt: the checkpoint's PQT state was saved with {saved}, "
                f"not with {self.config!r}; resume with the config it was trained with"
            )
        set_seed_state(state)


def _parse_config(text: object) -> Optional[object]:
    """The PQTConfig whose repr `text` is (None if it is not one).

    Compared as a config, not as a string: a checkpoint written before a field was added to
    PQTConfig lacks the field in its repr, and the field's default is what the old code did.
    """
    import ast

    from .config import PQTConfig

    try:
        call = ast.parse(str(text), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "PQTConfig"):
            return None
        return PQTConfig(**{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})  # type: ignore[misc]
    except (SyntaxError, ValueError, TypeError):  # not a repr, an unknown field, a bad value
        return None
