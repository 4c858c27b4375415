"""TemplateLayoutPass: emit_template_layouts as a joint-graph pass, after the SamplePass.

It rewrites only samples of weights on a device where Inductor may compile a GEMM to a Triton
template (compiler/targets.py `gemm_templates`, read inside the compile, whose config patches
hold): the default mode and the C++ backend get the graph exactly as the SamplePass left it.
"""

from __future__ import annotations

from torch.fx import Graph

from ..targets import gemm_templates
from .base import PQTPass
from .template_layout import emit_template_layouts

__all__ = ["TemplateLayoutPass"]


class TemplateLayoutPass(PQTPass):
    """The sample in the layout each GEMM template reads (template_layout.py)."""

    name = "pqt_template_layout"

    def run(self, graph: Graph) -> None:
        emit_template_layouts(graph, gemm_templates)
