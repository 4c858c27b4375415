"""The main job's arms: the recipes compared, each a model, an optimizer and its compiled step
callables by stage, and the round-to-nearest evaluation context (examples/train.py drives them)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch

import pqt_compile
from pqt_compile import PQTConfig

__all__ = ["ARMS", "ANNEAL", "Arm", "torchao_prepare", "quantized"]

ARMS = ("baseline", "pqt", "ste", "pqt-ste", "pqt-anneal", "torchao")
#: pqt-anneal: the noise std over the run, by quarters (a compiled graph each: the std is a
#: constant of the graph, so a smooth schedule would recompile every step).
ANNEAL = (1.0, 0.75, 0.5, 0.25)


def torchao_prepare(model: torch.nn.Module, cfg: PQTConfig) -> torch.nn.Module:
    """torchao's fake-quant QAT on every nn.Linear (int4 or int8 symmetric groups of the block size)."""
    bits = {"int4": torch.int4, "int8": torch.int8}.get(cfg.format)
    if bits is None or not isinstance(cfg.block_size, int):
        raise SystemExit(f"--arms torchao: torchao's QAT has int4/int8 groups; --format {cfg.format} "
                         f"--block-size {cfg.block_size} has no torchao counterpart (use --format int4)")
    try:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    except ImportError as e:
        raise SystemExit(f"--arms torchao: torchao is not importable ({e}); pip install -e '.[bench]'") from None
    quantize_(model, QATConfig(weight_config=IntxFakeQuantizeConfig(bits, group_size=cfg.block_size), step="prepare"))
    return model


class Arm:
    """One recipe: its model, optimizer, and stages (first step, PQTConfig or None, compiled callable).

    Compiling is lazy (torch.compile compiles at the first call), so building an arm is cheap.
    """

    def __init__(self, name: str, model: torch.nn.Module, cfg: PQTConfig, steps: int, lr: float,
                 ste_fraction: float = 0.25) -> None:
        self.name, self.model = name, model
        # STE draws no noise: the PQT arms' noise settings do not carry over to it.
        ste = cfg.replace(mode="ste", noise="gaussian", noise_std=None)
        plan: list[tuple[int, Optional[PQTConfig]]]
        if name == "baseline":
            plan = [(0, None)]
        elif name == "pqt":
            plan = [(0, cfg)]
        elif name == "ste":
            plan = [(0, ste)]
        elif name == "pqt-ste":
            plan = [(0, cfg), (round(steps * (1 - ste_fraction)), ste)]
        elif name == "pqt-anneal":
            plan = [(steps * i // len(ANNEAL), cfg.replace(noise_std=cfg.noise_std * f)) for i, f in enumerate(ANNEAL)]
        elif name == "torchao":
            plan = [(0, None)]
            torchao_prepare(model, cfg)
        else:
            raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
        self.stages: list[tuple[int, Optional[PQTConfig], Callable]] = [
            (first, c, torch.compile(model) if c is None else pqt_compile.compile(model, c)) for first, c in plan
        ]
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
        self.train_loss: list[float] = []
        self.step_s: list[float] = []
        self.curve: list[tuple[int, float, float]] = []  # (step, clean val loss, quantized val loss)

    def stage(self, step: int) -> tuple[int, Optional[PQTConfig], Callable]:
        return [s for s in self.stages if s[0] <= step][-1]

    def fn(self, step: int) -> Callable:
        return self.stage(step)[2]


@contextlib.contextmanager
def quantized(model: torch.nn.Module, axes: dict[str, int], cfg: PQTConfig) -> Iterator[torch.nn.Module]:
    """The model with every sampled weight replaced by its round-to-nearest value (what
    `quantize_model` deploys); the weights are restored on exit."""
    params = dict(model.named_parameters(remove_duplicate=False))
    saved = {n: params[n].detach().clone() for n in axes}
    try:
        with torch.no_grad():
            for n, axis in axes.items():
                params[n].copy_(pqt_compile.quantize(params[n], axis=axis, config=cfg))
        yield model
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
