"""FX passes of pqt_compile, one concern per file.

- weight_edges: find weight Parameter -> matmul operand paths and their reduction axes.
- insert_sample: rewire those paths through one `pqt.sample` per weight and dtype.
"""

from .insert_sample import insert_sample
from .weight_edges import MatmulUse, SkippedWeight, WeightEdge, backward_nodes, find_weight_edges

__all__ = ["find_weight_edges", "insert_sample", "backward_nodes", "WeightEdge", "MatmulUse", "SkippedWeight"]
