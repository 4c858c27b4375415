"""explain: which weights PQT sampled, which it did not and why, and where the samples landed.

`pqt_compile.explain(model, *args, config=None, **kwargs)` compiles the model with the pqt
backend, runs one training step (forward and backward) and returns an `ExplainReport`. The
report is built from what the passes recorded while they ran (`recording()`: NOTE [recording]
in compiler/passes/base.py) and from Inductor's own output code, so it cannot disagree with
the compiler.

It leaves the rest of the process as it found it: other compiled models keep their compiled
code (Dynamo keys its cache by backend, so explain's compile is an extra entry, not a
replacement; no `torch._dynamo.reset()`), the seed stream, the model's mode and its
gradients (tools/restore.py) are restored afterwards. Its compile bypasses Inductor's caches (a cache hit would not
run the passes it reports on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tabulate import tabulate

from ..compat import capture_output_code, custom_graph_pass_base, dynamo_counters, in_place_compile_suspended, pytree
from ..config import PQTConfig, config_or_default
from ..guards import eager_cause, recurrent_cause
from ..selection import could_be_sampled
from ..sample_parts import SAMPLE_OPS
from .restore import model_state_restored

__all__ = ["explain", "ExplainReport", "SampledWeight", "UnsampledWeight"]


@dataclass
class SampledWeight:
    name: str
    shape: tuple
    dtype: str
    axis: int
    format: str
    block_size: Any
    out_dtypes: list
    forward_uses: int
    backward_uses: int
    landed: str = "unknown"
    notes: list = field(default_factory=list)


@dataclass
class UnsampledWeight:
    name: str
    reason: str


@dataclass
class ExplainReport:
    """What one compiled training step did with the model's weights."""

    config: PQTConfig
    sampled: list[SampledWeight] = field(default_factory=list)
    unsampled: list[UnsampledWeight] = field(default_factory=list)
    graph_breaks: list[str] = field(default_factory=list)
    graphs: int = 0
    recompiles: int = 0
    artifacts: dict[str, str] = field(default_factory=dict)  # stable file name -> text
    eager_note: str = ""  # why no graph was compiled, where that is known

    def __str__(self) -> str:
        c = self.config
        what = ("mode ste (round to nearest, straight-through gradient)" if c.mode == "ste"
                else f"noise {c.noise} (std {c.noise_std:.4g} step)")
        head = (f"pqt explain: format {c.format}, block {c.block_size}, {what}\n"
                f"graphs: {self.graphs}, recompiles: {self.recompiles}, graph breaks: {len(self.graph_breaks)}, "
                f"sampled weights: {len(self.sampled)}, not sampled: {len(self.unsampled)}")
        rows = [[s.name, "x".join(map(str, s.shape)), s.dtype, s.axis, ",".join(s.out_dtypes), s.forward_uses, s.backward_uses, s.landed]
                for s in self.sampled]
        if self.graphs == 0:
            head += ("\nno graph was compiled: the whole step ran eagerly, so nothing was sampled"
                     + (f". {self.eager_note}" if self.eager_note else ""))
        parts = [head, "", "Sampled", tabulate(rows, headers=["weight", "shape", "dtype", "axis", "sample dtype", "fwd uses", "bwd uses", "landed"])]
        if self.unsampled:
            parts += ["", "Not sampled", tabulate([[u.name, u.reason] for u in self.unsampled], headers=["parameter", "reason"])]
        notes = [f"- {s.name}: {n}" for s in self.sampled for n in s.notes]
        if notes:
            parts += ["", "Notes", *notes]
        if self.graph_breaks:
            parts += ["", "Graph breaks", *[f"- {b}" for b in self.graph_breaks]]
        return "\n".join(parts)

    def to_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "sampled": [dataclasses.asdict(s) for s in self.sampled],
            "unsampled": [dataclasses.asdict(u) for u in self.unsampled],
            "graph_breaks": self.graph_breaks,
            "graphs": self.graphs,
            "recompiles": self.recompiles,
            "eager_note": self.eager_note,
            "artifacts": sorted(self.artifacts),
        }

    def save(self, directory: str) -> list[str]:
        """Write summary.txt, report.json and one file per stage; return the paths. A previous
        report's files in `directory` go first (only names a report writes): a dump is one run's."""
        os.makedirs(directory, exist_ok=True)
        files = {"summary.txt": str(self) + "\n", "report.json": json.dumps(self.to_dict(), indent=1, default=str), **self.artifacts}
        for name in os.listdir(directory):
            if name not in files and _REPORT_FILE.fullmatch(name) and os.path.isfile(os.path.join(directory, name)):
                os.unlink(os.path.join(directory, name))
        paths = []
        for name, text in files.items():
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(text)
            paths.append(path)
        return paths


#: the names `ExplainReport.save` writes
_REPORT_FILE = re.compile(r"summary\.txt|report\.json|\d+_dynamo_graph\.txt|joint_\d+_\w+\.txt|partitioned_\d+_\w+\.txt|"
                          r"output_code_\d+\.py")
_KERNEL_DEF = re.compile(r"^(\w+) = async_compile\.\w+\((?:\[[^\]]*\], )?r?'''(.*?)'''", re.M | re.S)


def _landings(code: str, weight_inputs: dict[str, str]) -> tuple[dict[str, str], str]:
    """Where each weight's sample landed in one output code, and the code with its kernels marked.

    A kernel computes a sample if its body holds the generator's multiplier (formula.MIX_MUL_1);
    it computes the sample of weight W if its call passes W's graph input. weight_inputs maps
    graph input names (primals_k) to weight names.
    """
    from ..formula import MIX_MUL_1

    if re.search(r"^[^#\n]*torch\.ops\.pqt\.sample", code, re.M):  # a call, not a provenance comment
        return {w: "not lowered (extern call to the eager op)" for w in weight_inputs.values()}, code
    landed: dict[str, str] = {}
    marked = code
    for m in _KERNEL_DEF.finditer(code):
        kernel, body = m.group(1), m.group(2)
        if str(MIX_MUL_1) not in body:
            continue
        calls = re.findall(rf"^\s*{kernel}(?:\.run)?\(([^\n]*)\)", code, re.M)
        args = {a.strip() for c in calls for a in c.split(",")}
        ops = re.sub(r"^(cpp|triton)_(poi_|red_|per_|tem_)?fused_?|_?\d+$", "", kernel)
        if kernel.startswith("triton_tem") or "template" in kernel:
            where = f"fused into a GEMM prologue ({kernel})"
        elif ops:
            where = f"fused into kernel {kernel}"
        else:
            where = f"materialised by its own kernel {kernel}"
        hits = [w for inp, w in weight_inputs.items() if inp in args]
        for w in hits:
            landed.setdefault(w, where)
        marked = marked.replace(m.group(0), f"# >>> PQT: {kernel} computes the sample of {', '.join(hits) or '?'}\n" + m.group(0), 1)
    return landed, marked


def explain(model: torch.nn.Module, *example_args: Any, config: Optional[PQTConfig] = None, **example_kwargs: Any) -> ExplainReport:
    """Compile `model` with PQT, run one training step, and report what happened (see the
    module docstring for what it leaves untouched)."""
    from .. import naming
    from ..compiler import backend as pqt_backend_mod
    from ..compiler.passes.base import recording

    config = config_or_default(config, "pqt_compile.explain")
    counters = dynamo_counters()
    breaks_before = {kind: dict(counters[kind]) for kind in ("graph_break", "unimplemented")}
    naming.register(model)
    dynamo_graphs: list[str] = []
    compile_ids: list = []
    post_grad: list[str] = []
    # Per post-grad graph, in order (each is lowered to one output code, in the same order): its
    # input names -> weight names, from the sample nodes. Per graph: every graph names its inputs
    # primals_1, ... (a graph break makes several).
    weight_inputs: list[dict[str, str]] = []

    class _PostGrad(custom_graph_pass_base()):  # type: ignore[misc]
        def __call__(self, graph: torch.fx.Graph) -> None:
            post_grad.append(str(graph))
            inputs: dict[str, str] = {}
            for target in SAMPLE_OPS:  # pqt.sample, sample_t, and the split's sample_from_values
                for n in graph.find_nodes(op="call_function", target=target):
                    if isinstance(n.args[0], torch.fx.Node) and "pqt_weight" in n.meta:
                        inputs[n.args[0].name] = n.meta["pqt_weight"]
            weight_inputs.append(inputs)

        def uuid(self) -> None:
            return None  # never cached: explain must see the passes run

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        fn = pqt_backend_mod.pqt_backend(gm, example_inputs, options={"config": config, "post_grad_custom_post_pass": _PostGrad()})
        dynamo_graphs.append(gm.print_readable(print_output=False))
        compile_ids.append(gm.meta.get("dynamo_compile_id"))
        return fn

    cm = torch.compile(model, backend=backend)

    def step() -> None:
        out = cm(*example_args, **example_kwargs)
        leaves = [out] if isinstance(out, torch.Tensor) else pytree().tree_leaves(out)
        first = next((t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad), None)
        if first is None:  # nothing to train: a backward would raise deep inside autograd
            raise ValueError("pqt explain: no output of the model requires grad (all are integer or detached), so no "
                             "training step can run; return a differentiable output (the logits, a loss)")
        first.float().square().mean().backward()

    with model_state_restored(model) as params:
        model.train()
        for p in params.values():
            p.grad = None  # the step's own gradients; the caller's come back after it
        # A model compiled in place (model.compile()) would run its own compiled code, not explain's.
        with recording() as rec, capture_output_code() as codes, in_place_compile_suspended(model):
            step()

    report = ExplainReport(config=config)
    report.graphs = len(dynamo_graphs)
    # A recompile is a second compile of the same frame within this call.
    frames = [getattr(cid, "frame_id", None) for cid in compile_ids]
    report.recompiles = len(frames) - len(set(frames))
    # A break Dynamo cannot resume from (inside a loop, a with block) skips the frame, and is
    # counted as "unimplemented" rather than "graph_break" (torch 2.13).
    new_breaks: dict[str, int] = {}
    for kind in ("graph_break", "unimplemented"):
        for reason, n in counters[kind].items():
            if n > breaks_before[kind].get(reason, 0):
                new_breaks.setdefault(reason, n - breaks_before[kind].get(reason, 0))
    report.graph_breaks = [f"{reason} (x{n})" for reason, n in new_breaks.items()]
    params = naming.named_parameters(model)
    for i, g in enumerate(dynamo_graphs):
        report.artifacts[f"{i:02d}_dynamo_graph.txt"] = g
    run = -1  # numbered in the order the passes ran: each compile builds new pass objects
    for name, _, when, text in rec.dumps:
        run += when == "before"
        report.artifacts[f"joint_{max(run, 0):02d}_{when}_{name}.txt"] = text
    for i, g in enumerate(post_grad):
        kind = "backward" if "tangents" in g else "forward"
        report.artifacts[f"partitioned_{i:02d}_{kind}.txt"] = g + _saved_tensors(g, kind)
    landings: dict[str, str] = {}
    merged = {k: v for inputs in weight_inputs for k, v in inputs.items()}
    for i, code in enumerate(codes):
        # The graph's own names where graphs and codes pair up (they do: one code per lowered graph).
        found, marked = _landings(code, weight_inputs[i] if len(codes) == len(weight_inputs) else merged)
        report.artifacts[f"output_code_{i:02d}.py"] = marked
        for w, where in found.items():
            landings.setdefault(w, where)
    seen_sampled: set[str] = set()
    for record in rec.records:
        for e in record.edges:
            if e.name in seen_sampled or not record.sampled:
                continue
            seen_sampled.add(e.name)
            p = params.get(e.name.split("#")[0])
            report.sampled.append(SampledWeight(
                e.name, tuple(p.shape) if p is not None else (), str(p.dtype).replace("torch.", "") if p is not None else "?",
                e.axis, config.format, config.block_size, list(e.dtypes), e.forward_uses, e.backward_uses,
                landings.get(e.name, "not found in the output code"), list(e.notes)))
        for s in record.skipped:
            if s.name not in seen_sampled and all(u.name != s.name for u in report.unsampled):
                report.unsampled.append(UnsampledWeight(s.name, s.reason))
    # Weights no graph received ran in code Dynamo ran eagerly (a skipped frame): clean, and said.
    listed = {w.name for w in report.sampled} | {u.name for u in report.unsampled}
    for p, w in naming.weight_names(model).values():
        if w.name not in listed and could_be_sampled(p, config, w.name, w.aliases):
            report.unsampled.append(UnsampledWeight(w.name, "never reached a PQT-compiled graph: code Dynamo ran eagerly "
                                                    "uses it (see the graph breaks), and it trains without noise"))
    if report.graphs == 0:
        report.eager_note = eager_cause() or recurrent_cause(model) or ""
    return report


def _saved_tensors(graph_text: str, kind: str) -> str:
    if kind != "forward":
        return ""
    out = re.findall(r"return \((.*)\)", graph_text)
    return f"\n# Outputs of the forward (model outputs, then tensors saved for backward):\n# {out[-1] if out else '?'}\n"
