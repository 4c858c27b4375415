"""Every private PyTorch API that pqt_compile uses, in one package, with the versions checked.

NOTE [private API]: torch.compile gives a backend a graph and example inputs and nothing else;
doing more (naming weights after the module being compiled, a custom Inductor lowering,
observing the end of a backward pass) needs internals that move between releases. Each one is
resolved here, lazily (importing pqt_compile imports none of them), through `require`, which
fails with `CompatError` naming the torch version, the symbol and the feature that needs it,
rather than with an AttributeError deep in a compile. Where a feature can degrade instead
(names from Dynamo sources when the compiled module cannot be read), the accessor says so and
returns a neutral value.

One module per part of torch, each symbol with the release it was read on: registry.py (`SYMBOLS`,
`require`, `CompatError`), dynamo.py (the compiled module, frames, placeholders, counters),
inductor.py (compile_fx, config, the lowering API, the prologue mark, output code),
distributed.py (FSDP2, DTensor, the max all-reduce) and autograd.py (backward passes, pytree,
nested traces). Import from the package: `from pqt_compile.compat import require`.

Checked on: torch 2.13.0 (CPU build) with triton 3.9.0, torch 2.14.1 with triton 3.8.0 and
torch 2.15.0 with triton 3.9.0 (the registry's CUDA builds, run on the CPU). `TORCH_CHECKED`
lists those releases; `tests/test_compat.py` resolves every symbol listed in `SYMBOLS`, and CI
reruns it with every other `private_api` test on the newest one (scripts/test-newest.sh).
Known drift: `Reduction.create` gained a keyword (`strict_sum` in 2.14, `strict_reduction` in
2.15); the lowering passes only keywords that all three releases share.
"""

from __future__ import annotations

from .registry import (
    TORCH_CHECKED,
    SYMBOLS,
    CompatError,
    require,
)
from .dynamo import (
    frame_root_module,
    placeholder_source_name,
    is_buffer_placeholder,
    mark_added_input,
    copy_dynamo_graph_attrs,
    compiled_module,
    compiled_model_called_alone,
    frame_modules,
    dynamo_counters,
    dynamo_recompile_limit,
)
from .distributed import (
    fsdp2_unsharded_params,
    dtensor_local_shape_and_offset,
    all_reduce_max_ops,
)
from .inductor import (
    inductor_config_options,
    compile_fx,
    custom_graph_pass_base,
    inductor_lowering_api,
    cpu_vector_isa,
    mark_prologue_candidate,
    floor_div,
    has_triton,
    trace_artifact,
    mode_options,
    capture_output_code,
)
from .autograd import (
    current_graph_task_id,
    queue_backward_callback,
    pytree,
    allow_nested_fx_trace,
)

__all__ = [
    "TORCH_CHECKED",
    "SYMBOLS",
    "CompatError",
    "require",
    "frame_root_module",
    "placeholder_source_name",
    "is_buffer_placeholder",
    "mark_added_input",
    "copy_dynamo_graph_attrs",
    "fsdp2_unsharded_params",
    "dtensor_local_shape_and_offset",
    "all_reduce_max_ops",
    "inductor_config_options",
    "compile_fx",
    "custom_graph_pass_base",
    "inductor_lowering_api",
    "cpu_vector_isa",
    "mark_prologue_candidate",
    "floor_div",
    "has_triton",
    "current_graph_task_id",
    "queue_backward_callback",
    "pytree",
    "allow_nested_fx_trace",
    "trace_artifact",
    "mode_options",
    "dynamo_counters",
    "capture_output_code",
    "dynamo_recompile_limit",
    "compiled_module",
    "compiled_model_called_alone",
    "frame_modules",
]
