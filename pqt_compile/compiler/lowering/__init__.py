"""Inductor lowerings for pqt.sample, one concern per file (imported by the backend on first use).

- inductor_ops: the formula's ops interface over Inductor's `ops` handler.
- sample: the lowering itself (block-amax Reduction + Pointwise).
"""

from . import sample  # noqa: F401  (registers the lowering)
