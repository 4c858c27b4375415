"""Factories for pqt-check's tests (`--model support.check_models:NAME`; tests/ is on sys.path)."""

from __future__ import annotations

import torch
import torch.nn as nn

from models import MLP, TinyGPT


def mlp() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return MLP(), (torch.randn(4, 32, generator=torch.Generator().manual_seed(1)),)


def tiny_gpt() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return TinyGPT(), (torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1)),)


class _NormOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def no_weights() -> tuple[nn.Module, tuple]:
    return _NormOnly(), (torch.randn(2, 8),)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc(x).sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return -x


def branchy() -> tuple[nn.Module, tuple]:
    return _Branchy(), (torch.randn(2, 8),)


def raises() -> nn.Module:
    raise RuntimeError("weights file not found: /nowhere/model.pt")


def one_item_tuple():
    """A factory that forgot its example inputs."""
    return (nn.Linear(4, 4),)


def not_a_module():
    return 42


def odd_width() -> tuple[nn.Module, tuple]:
    """A Linear reading 40 inputs: NVFP4's blocks of 16 cannot tile it (a compile-time refusal)."""
    return nn.Linear(40, 16), (torch.randn(2, 40),)


class _NoGradInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x):
        with torch.no_grad():  # the reference's trace does not replay this switch
            return self.fc(x)


def no_grad_inside() -> tuple[nn.Module, tuple]:
    return _NoGradInside(), (torch.randn(2, 32),)


class _Argmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc(x).argmax(-1)


def int_output() -> tuple[nn.Module, tuple]:
    return _Argmax(), (torch.randn(2, 32),)


class _IndexFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 8)

    def forward(self, x):
        y = self.fc(x)
        return y.argmax(-1), y  # the first output is not differentiable


def index_first() -> tuple[nn.Module, tuple]:
    return _IndexFirst(), (torch.randn(2, 32),)
