"""The model state a diagnostic tool leaves as it found it: the training flag, the seed stream and
the parameters' gradients (`explain` and `check` run a training step on the user's model)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["model_state_restored"]


@contextmanager
def model_state_restored(model: torch.nn.Module) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Within: the tool may switch `model`'s mode, draw from the seed stream and write `.grad`.
    After (also on an error): every module's mode, the seed position and every parameter's `.grad` (the same
    tensor object, or None) are restored, so gradients accumulated before the call are not lost.
    Yields the model's parameters by name (naming.named_parameters)."""
    from .. import seeds, steps
    from ..naming import named_parameters

    params = named_parameters(model)
    modes = [(m, m.training) for m in model.modules()]  # each module's own (a frozen backbone kept in eval)
    stream, pending = seeds.seed_state(), steps.pending()
    saved_grads = {name: p.grad for name, p in params.items()}
    try:
        yield params
    finally:
        for m, training in modes:
            m.training = training
        seeds.set_seed_state(stream)
        steps.set_pending(pending)
        for name, p in params.items():
            p.grad = saved_grads[name]
