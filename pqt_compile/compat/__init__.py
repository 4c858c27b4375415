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
inductor.py (compile_fx, config, the lowering API, the prologue mark, output code, the 0-d input
checks), distributed.py (FSDP2, DTensor, the max all-reduce) and autograd.py (backward passes,
pytree, nested traces). Import from the package: `from pqt_compile.compat import require`.

Checked on: torch 2.13.0 (CPU build) with triton 3.9.0, torch 2.14.1 with triton 3.8.0 and
torch 2.15.0 with triton 3.9.0 (the registry's CUDA builds, run on the CPU). `TORCH_CHECKED`
lists those releases; `tests/test_compat.py` resolves every symbol listed in `SYMBOLS`, and CI
reruns it with every other `private_api` test on the newest one (scripts/test-newest.sh).
Known drift: `Reduction.create` gained a keyword (`strict_sum` in 2.14, `strict_reduction` in
2.15); the lowering passes only keywords that all three releases share.
"""

from __future__ import annotations

# Each module's `__all__` is the one list of its names; the package re-exports them.
from . import autograd, distributed, dynamo, inductor, registry
from .autograd import *  # noqa: F403
from .distributed import *  # noqa: F403
from .dynamo import *  # noqa: F403
from .inductor import *  # noqa: F403
from .registry import *  # noqa: F403

__all__ = [*registry.__all__, *dynamo.__all__, *inductor.__all__, *distributed.__all__, *autograd.__all__]
