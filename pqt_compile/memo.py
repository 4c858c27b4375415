"""ObjectMemo: a value remembered per live object and version, for checks made at every step.

The optimizer hooks (pqt_compile.steps, pqt_compile.guards) run at every optimizer step and
decide something per optimizer that only changes when the set of PQT-compiled weights does
(a version counter). They keep one rule for it, here: entries keyed by `id(obj)` in a plain dict
and checked against a weak reference, because a `WeakIdKeyDictionary` lookup builds a weak
reference per call; an entry whose object is gone is dropped before a new one is stored, since
its id may be reused by a new object.
"""

from __future__ import annotations

import weakref
from typing import Any, Generic, Hashable, Optional, TypeVar

__all__ = ["ObjectMemo"]

T = TypeVar("T")


class ObjectMemo(Generic[T]):
    """`get(obj, version)` returns what `put(obj, version, value)` stored while `obj` is alive and
    the version is the same, else None (so a stored value must not be None)."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, Hashable, T]] = {}

    def get(self, obj: Any, version: Hashable) -> Optional[T]:
        hit = self._entries.get(id(obj))
        if hit is not None and hit[0]() is obj and hit[1] == version:
            return hit[2]
        return None

    def put(self, obj: Any, version: Hashable, value: T) -> None:
        if value is None:
            raise ValueError("pqt: ObjectMemo cannot store None (get returns None for a miss)")
        for key in [k for k, (ref, _, _) in self._entries.items() if ref() is None]:
            del self._entries[key]
        self._entries[id(obj)] = (weakref.ref(obj), version, value)

    def __len__(self) -> int:
        return len(self._entries)
