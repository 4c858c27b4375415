"""pqt_compile.memo.ObjectMemo: the per-object, per-version memo of the optimizer hooks."""

import gc

import pytest

from pqt_compile.memo import ObjectMemo


class _Obj:
    pass


def test_a_value_is_returned_for_the_same_object_and_version_only():
    memo: ObjectMemo[str] = ObjectMemo()
    a, b = _Obj(), _Obj()
    memo.put(a, 1, "a at 1")
    assert memo.get(a, 1) == "a at 1"
    assert memo.get(a, 2) is None  # another version: decide again
    assert memo.get(b, 1) is None  # another object
    memo.put(a, 2, "a at 2")
    assert memo.get(a, 2) == "a at 2" and memo.get(a, 1) is None


def test_an_entry_of_a_dead_object_is_not_returned_for_a_new_one_with_its_id_and_is_dropped():
    memo: ObjectMemo[bool] = ObjectMemo()
    dead = _Obj()
    memo.put(dead, 0, True)
    dead_id = id(dead)
    del dead
    gc.collect()
    # CPython hands a freed object's memory, hence its id, to the next object of its size: find
    # one, so that only the weak reference can tell the two apart.
    made = []
    for _ in range(1000):
        made.append(_Obj())
        if id(made[-1]) == dead_id:
            break
    else:
        pytest.skip("no new object reused the dead one's id on this interpreter")
    assert memo.get(made[-1], 0) is None
    keep = _Obj()
    memo.put(keep, 0, False)
    assert len(memo) == 1 and memo.get(keep, 0) is False  # the dead entry went on the next put


def test_none_cannot_be_stored():
    with pytest.raises(ValueError, match="cannot store None"):
        ObjectMemo().put(_Obj(), 0, None)
