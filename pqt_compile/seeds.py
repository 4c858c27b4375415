"""Keys (one stable 32-bit id per weight) and the seed stream (one seed per training step and
micro-batch).

NOTE [the seed rule]: the noise a weight receives is a pure function of
(run seed, training step, micro-batch within the step, weight name):

    seed(step, micro_batch) = mix64(mix64(mix64(base) ^ step) ^ mix64(micro_batch + MICRO_SALT))
    key(weight)             = key_for_name(its qualified name)

* `base` is `manual_seed(base)`, the run's one seed (0 until set).
* `step` counts optimizer steps that updated a PQT-compiled model's weights; `micro_batch`
  counts the backward passes through PQT graphs since the last such step (gradient
  accumulation: each micro-batch draws afresh). `pqt_compile/steps.py` observes both events.
* Every compiled graph of a step reads the same seed, so the draw does not depend on how
  Dynamo split the model (whole, graph breaks, per block, DDP's graph splitting, FSDP2).
* A backward regenerates its forward's sample from the seed saved with it; a recompute
  (activation checkpointing) runs before its backward pass ends, so it reads the same seed.

`fixed_seed(s)` pins the seed of every call inside it (to compare with `reference.run`).
The state is process-wide (one training loop per process); `PQTState` checkpoints it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from typing import Iterator, Optional

from .config import PQTConfig

__all__ = [
    "key_for_name",
    "manual_seed",
    "step_seed",
    "current_seed",
    "fixed_seed",
    "rank_seed",
    "seed_state",
    "set_seed_state",
    "check_seed",
    "PQTState",
]

MICRO_SALT = 0x5851F42D4C957F2D  # separates the micro-batch word from the step word


def key_for_name(name: str) -> int:
    """The 32-bit key of the weight with qualified name `name` (e.g. "h.0.attn.c_attn.weight").

    blake2b of the UTF-8 name, 4 bytes, little-endian: stable across processes, runs and
    machines, unlike Python's `hash`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"pqt: a weight key needs a non-empty qualified name, got {name!r}")
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest(), "little")


def _mix64(x: int) -> int:
    # splitmix64 finaliser; the result fits int64 (top bit cleared), as the op's seed input.
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


_INT64 = (-(2**63), 2**63)  # a seed is the op's int64 input


def _check_int(value: object, what: str, minimum: Optional[int] = None) -> int:
    """`value` if it is an int within int64 (and >= minimum); a ValueError naming `what` otherwise."""
    low = _INT64[0] if minimum is None else minimum
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < _INT64[1]:
        bound = f" in [{low}, 2**63)" if minimum is not None else " within int64, [-2**63, 2**63)"
        raise ValueError(f"pqt: {what} must be an int{bound}, got {value!r}")
    return value


def check_seed(value: object) -> int:
    """`value` if it is a seed (an int within int64, what the op takes); a ValueError naming it otherwise."""
    return _check_int(value, "a seed")


class _Stream:
    """The process's position in the seed stream."""

    def __init__(self) -> None:
        self.base = 0
        self.step = 0
        self.micro_batch = 0
        self.memo: tuple[tuple[int, int, int], int] = ((-1, -1, -1), 0)  # (position, its seed)


_stream = _Stream()
_pinned = threading.local()  # fixed_seed is per thread: a comparison must not leak into another


def manual_seed(seed: int) -> None:
    """Set the run's seed and restart the stream at step 0, micro-batch 0 (a run with the same
    seed draws the same noise)."""
    _stream.base = _check_int(seed, "manual_seed's seed")
    _stream.step = _stream.micro_batch = 0


def step_seed(step: int, micro_batch: int = 0, base: Optional[int] = None) -> int:
    """The seed of (step, micro_batch) in the run seeded `base` (default: the current run's).

    Pass it to `reference.run(..., seed=step_seed(s, m))` to reproduce what the compiled model
    drew at step s, micro-batch m.
    """
    base = _stream.base if base is None else _check_int(base, "base")
    return _seed_at(base, _check_int(step, "step", 0), _check_int(micro_batch, "micro_batch", 0))


@functools.lru_cache(maxsize=16)
def _word(x: int) -> int:
    # The base's and the micro-batch's words repeat from step to step: mixed once each.
    return _mix64(x)


def _seed_at(base: int, step: int, micro_batch: int) -> int:
    """NOTE [the seed rule]'s formula (arguments checked by the caller)."""
    return _mix64(_mix64(_word(base) ^ step) ^ _word(micro_batch + MICRO_SALT))


def current_seed() -> int:
    """The seed of a compiled call made now: the pinned one under `fixed_seed`, else the seed
    of the current step and micro-batch."""
    pinned = getattr(_pinned, "seed", None)
    if pinned is not None:
        return pinned
    # Memoised per position: every graph of a micro-batch asks (wrapper.py NOTE [host time per call]).
    position = (_stream.base, _stream.step, _stream.micro_batch)
    if _stream.memo[0] != position:
        _stream.memo = (position, _seed_at(*position))
    return _stream.memo[1]


def micro_batch() -> int:
    """The backward passes through PQT graphs since the last optimizer step that counted."""
    return _stream.micro_batch


def advance_step() -> None:
    """An optimizer step updated PQT-compiled weights: the next draw is step + 1, micro-batch 0."""
    _stream.step += 1
    _stream.micro_batch = 0


def advance_micro_batch() -> None:
    """A backward pass through PQT graphs finished: the next forward is a new micro-batch."""
    _stream.micro_batch += 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed rank `rank` uses for a call seeded `seed` under `PQTConfig(per_rank_noise=True)`
    (pass it to `reference.run(..., seed=rank_seed(seed, rank))` to reproduce that rank)."""
    _check_int(seed, "rank_seed's seed")
    _check_int(rank, "a rank", 0)
    return _mix64(seed ^ _mix64(0x632BE59BD9B4E019 + rank))


@contextlib.contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Pin the seed of every compiled call inside the block to `seed` (nesting restores).

    The step and micro-batch counters still advance inside it."""
    _check_int(seed, "fixed_seed's seed")
    previous = getattr(_pinned, "seed", None)
    _pinned.seed = seed
    try:
        yield
    finally:
        _pinned.seed = previous


_STATE_KEYS = ("base", "step", "micro_batch")


def seed_state() -> dict[str, int]:
    """The stream's position (base, step, micro_batch), to save with a checkpoint."""
    return {k: getattr(_stream, k) for k in _STATE_KEYS}


def set_seed_state(state: dict[str, int]) -> None:
    """Restore a position saved by `seed_state`."""
    if isinstance(state, dict) and "counter" in state and "step" not in state:
        raise ValueError(
            "pqt: this seed state was saved by pqt_compile 0.1, whose stream advanced once per compiled "
            "call; the stream now advances per training step and cannot continue it exactly. Start a new "
            "stream with pqt_compile.manual_seed(seed) instead of loading it"
        )
    if not isinstance(state, dict) or any(k not in state for k in _STATE_KEYS):
        raise ValueError(f"pqt: not a seed state (expected the keys {list(_STATE_KEYS)}): {state!r}")
    try:  # the ranges step_seed and manual_seed accept (1.7 or True is not a step)
        values = {k: _check_int(state[k], f"the seed state's {k}", None if k == "base" else 0) for k in _STATE_KEYS}
    except ValueError as e:
        raise ValueError(f"{e} (in the seed state {state!r})") from None
    for k, v in values.items():
        setattr(_stream, k, v)


class PQTState:
    """The PQT seed stream as a checkpointable object (`state_dict` / `load_state_dict`).

    Put it in the state you checkpoint (e.g. torch.distributed.checkpoint's app state, or next
    to the model and optimizer state dicts) so that a resumed run draws exactly the noise the
    uninterrupted run would have drawn. Loading state saved with another PQT config is refused:
    the noise would otherwise change silently.
    """

    def __init__(self, config: PQTConfig) -> None:
        if not isinstance(config, PQTConfig):  # its repr is what a resume is checked against
            raise TypeError(f"pqt: PQTState takes the PQTConfig the model is trained with, got {config!r}; e.g. "
                            "PQTState(PQTConfig(format='fp4_e2m1'))")
        self.config = config

    def state_dict(self) -> dict:
        return {**seed_state(), "config": repr(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not ("step" in state or "counter" in state):
            raise ValueError("pqt: this checkpoint holds no PQT seed state; resuming would reseed the noise")
        if "config" not in state:
            raise ValueError("pqt: this seed state holds no PQT config (a seed_state() dict, not a PQTState's "
                             "state_dict); restore it with pqt_compile.set_seed_state(state), and checkpoint "
                             "PQTState(config).state_dict() from now on")
        saved = state.get("config")
        if _parse_config(saved) != self.config:
            raise ValueError(
                f"pqt: the checkpoint's PQT state was saved with {saved}, "
                f"not with {self.config!r}; resume with the config it was trained with"
            )
        set_seed_state(state)


def _parse_config(text: object) -> Optional[PQTConfig]:
    """The PQTConfig whose repr `text` is (None if it is not one).

    Compared as a config, not as a string: a checkpoint written before a field was added to
    PQTConfig lacks the field in its repr, and the field's default is what the old code did.
    A `seed=` of pqt_compile 0.1 is dropped here (its stream is refused by set_seed_state).
    """
    import ast

    try:
        call = ast.parse(str(text), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "PQTConfig"):
            return None
        fields = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg != "seed"}
        return PQTConfig(**fields)  # type: ignore[arg-type]
    except (SyntaxError, ValueError, TypeError):  # not a repr, an unknown field, a bad value
        return None
