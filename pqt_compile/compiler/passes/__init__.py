"""FX passes of pqt_compile, one concern per file.

- weight_edges: find weight Parameter -> matmul operand paths and their reduction axes.
- axis_tracking: which ops such a path passes through, and where each moves the weight's axes.
- insert_sample: rewire those paths through one `pqt.sample` per weight and dtype.
- matvec_as_matmul: aten.mv / addmv as one-column mm / addmm, which Inductor lowers.
- template_layout: where a Triton GEMM template may read a sample, give it the layout it reads.
- node_values: a node's fake value, read and filled (for the nodes a pass adds).
"""

from .insert_sample import insert_sample
from .template_layout import emit_template_layouts
from .weight_edges import MatmulUse, SkippedWeight, WeightEdge, backward_nodes, find_weight_edges

__all__ = ["find_weight_edges", "insert_sample", "emit_template_layouts", "backward_nodes", "WeightEdge", "MatmulUse", "SkippedWeight"]
