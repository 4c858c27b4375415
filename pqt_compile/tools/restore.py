"""The model state a diagnostic tool leaves as it found it: the training flag, the buffers, the seed
stream, torch's random number generators and the parameters' gradients (`explain` and `check` run a
training step on the user's model)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["model_state_restored"]


@contextmanager
def model_state_restored(model: torch.nn.Module) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Within: the tool may switch `model`'s mode, update its buffers (BatchNorm's running
    statistics), draw from the seed stream and from torch's generators (dropout) and write `.grad`.
    After (also on an error): every module's mode, every buffer's values (in the same tensor
    object), the seed position, torch's CPU and CUDA generators and every parameter's `.grad` (the
    same tensor object, or None) are restored, so neither accumulated gradients nor the run's later
    random draws change. Yields the model's parameters by name (naming.named_parameters)."""
    from .. import seeds, steps
    from ..naming import named_parameters

    params = named_parameters(model)
    modes = [(m, m.training) for m in model.modules()]  # each module's own (a frozen backbone kept in eval)
    buffers = [(m, name, b, b.detach().clone()) for m in model.modules() for name, b in m.named_buffers(recurse=False)]
    stream, pending = seeds.seed_state(), steps.pending()
    saved_grads = {name: p.grad for name, p in params.items()}
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield params
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for m, name, b, values in buffers:
                if getattr(m, name, None) is not b:  # reassigned (not updated in place): the original back
                    setattr(m, name, b)
                b.copy_(values)
        seeds.set_seed_state(stream)
        steps.set_pending(pending)
        for name, p in params.items():
            p.grad = saved_grads[name]
