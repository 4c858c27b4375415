"""What every inference-engine writer shares: its error type, writing without leaving a
partial output behind, and finding the Parameter behind a state_dict key.

A writer builds its output under a temporary name in the destination's own directory (so that
the final rename stays on one filesystem and is atomic) and renames it into place only when
everything has been written; on any failure the temporary output is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Optional

import torch

__all__ = ["ExportError", "atomic_output", "check_destination", "parameter_at"]


class ExportError(ValueError):
    """The model, format or option cannot be written exactly in the target; the message names
    what to change. A ValueError, so that callers catching bad arguments catch it too."""


def check_destination(path: str, *, force: bool, directory: Optional[bool] = None) -> None:
    """Refuse an existing `path` unless `force`, and a path that cannot become the output (an empty
    one; for a file output (`directory` False) a directory or a name ending in a separator; for a
    directory output an existing file): before any work is done."""
    if not path:
        raise ExportError("the output path is empty; give a file or directory name")
    if directory is False and (path.endswith(os.sep) or os.path.isdir(path)):
        raise ExportError(f"{path} is a directory, but this output is a file; give a file name (e.g. {os.path.join(path, 'model.gguf')})")
    if directory is True and os.path.lexists(path) and not os.path.isdir(path):
        raise ExportError(f"{path} is a file, but this output is a directory; give a directory name")
    if os.path.lexists(path) and not force:
        raise ExportError(f"{path} exists; choose another output path, or pass force=True (--force) to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ExportError(f"the directory {parent} of the output {path} does not exist; create it first")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


@contextlib.contextmanager
def atomic_output(path: str, *, directory: bool, force: bool) -> Iterator[str]:
    """Yield a temporary path beside `path` (a new empty directory if `directory`, else a file
    name); when the block succeeds, rename it to `path`, replacing an existing output only if
    `force`. If the block raises, the temporary output is removed and `path` is untouched.

    `force` replaces a previous output, not a directory that holds more: an existing directory with
    a file the new output does not have (a checkpoint's optimizer.pt) is refused, untouched."""
    check_destination(path, force=force, directory=directory)
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(os.path.abspath(path))
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=parent)
        os.close(fd)
    try:
        yield tmp
        # mkstemp / mkdtemp create private (0600 / 0700) entries: give the output the usual mode.
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())
        check_destination(path, force=force, directory=directory)  # someone may have created it meanwhile
        if directory and os.path.isdir(path):
            others = sorted(set(os.listdir(path)) - set(os.listdir(tmp)))
            if others:
                raise ExportError(
                    f"{path} holds {', '.join(others[:5])}{', ...' if len(others) > 5 else ''}, which this export does "
                    "not write: force=True replaces a previous export, not a directory with other files (replacing it "
                    "would delete them). Write to another directory, or move those files out first")
        if directory and os.path.lexists(path):
            # os.replace cannot put a directory over a non-empty one: move the old one aside
            # first, so that `path` never holds a mix of the two.
            old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def parameter_at(model: torch.nn.Module, key: str) -> Optional[torch.nn.Parameter]:
    """The Parameter behind a state_dict key of `model` (None for a buffer). Writers compare
    Parameters by object: a tied weight is sampled under one name and stored under another."""
    try:
        return model.get_parameter(key)
    except AttributeError:
        return None
