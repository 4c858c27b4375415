"""The main job's arms: the recipes compared, each a model, an optimizer and its compiled step
callables by stage, and the round-to-nearest evaluation context (examples/train.py drives them)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Union

import torch

import pqt_compile
from pqt_compile import PQTConfig

__all__ = ["ARMS", "ANNEAL", "StageKey", "stage_plan", "stage_label", "Arm", "torchao_prepare", "quantized"]

ARMS = ("baseline", "pqt", "ste", "pqt-ste", "pqt-anneal", "torchao")
#: pqt-anneal: the noise std over the run, by quarters (a compiled graph each: the std is a
#: constant of the graph, so a smooth schedule would recompile every step).
ANNEAL = (1.0, 0.75, 0.5, 0.25)
#: What a stage compiles (stage_plan).
StageKey = Union[None, str, PQTConfig]


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


def stage_plan(name: str, cfg: PQTConfig, steps: int, ste_fraction: float = 0.25) -> list[tuple[int, StageKey]]:
    """An arm's stages for `steps` steps: [(first step, key)], where the key is what the stage
    compiles: None (plain torch.compile), "torchao" (torch.compile of torchao's prepared model),
    or the PQTConfig it trains with (equal keys compile the same graph)."""
    ste = cfg.replace(mode="ste")  # STE draws no noise: the PQT arms' noise settings are dropped
    if name == "baseline":
        return [(0, None)]
    if name == "pqt":
        return [(0, cfg)]
    if name == "ste":
        return [(0, ste)]
    if name == "pqt-ste":
        return [(0, cfg), (round(steps * (1 - ste_fraction)), ste)]
    if name == "pqt-anneal":
        return [(steps * i // len(ANNEAL), cfg.replace(noise_std=cfg.noise_std * f)) for i, f in enumerate(ANNEAL)]
    if name == "torchao":
        return [(0, "torchao")]
    raise ValueError(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")


class Arm:
    """One recipe: its model, optimizer, and stages (first step, key, compiled callable).

    Compiling is lazy (torch.compile compiles at the first call), so building an arm is cheap.
    An arm outlives a seed: `reset` loads the next seed's starting weights into the same
    parameters and starts a fresh optimizer, so its compiled callables (Dynamo's guards hold
    for the same module) are reused instead of compiled again (`reusable` is False for torchao,
    whose prepared model is built anew).
    """

    def __init__(self, name: str, model: torch.nn.Module, cfg: PQTConfig, steps: int, lr: float,
                 ste_fraction: float = 0.25, fused: bool = False) -> None:
        self.name, self.model, self.cfg, self.ste_fraction, self.fused = name, model, cfg, ste_fraction, fused
        plan = stage_plan(name, cfg, steps, ste_fraction)
        if name == "torchao":
            torchao_prepare(model, cfg)
        self.reusable = name != "torchao"
        self._compiled: dict[StageKey, Callable] = {
            key: torch.compile(model) if not isinstance(key, PQTConfig) else pqt_compile.compile(model, key)
            for _, key in plan
        }
        self.called: set[StageKey] = set()  # stages run at least once in this process (so compiled)
        self.compile_s: dict[str, float] = {}  # a stage's first step, compile included, by stage label
        self.set_steps(steps)
        self.reset(None, lr)

    def set_steps(self, steps: int) -> None:
        """The stage boundaries for a run of `steps` steps (the keys, so the callables, stay)."""
        self.stages: list[tuple[int, StageKey, Callable]] = [
            (first, key, self._compiled[key]) for first, key in stage_plan(self.name, self.cfg, steps, self.ste_fraction)
        ]

    def reset(self, state: Optional[dict], lr: float) -> None:
        """Start a seed: the starting weights `state` (None: keep the model's), a fresh AdamW
        (fused on CUDA: one kernel per step for every parameter), empty logs."""
        if state is not None:
            self.model.load_state_dict(state)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                                     fused=True if self.fused else None)
        self.train_loss: list[float] = []
        self.step_s: list[float] = []
        self.compile_steps: set[int] = set()  # steps whose time includes a compile (not timed)
        self.curve: list[tuple[int, float, float]] = []  # (step, clean val loss, quantized val loss)

    def stage(self, step: int) -> tuple[int, StageKey, Callable]:
        return [s for s in self.stages if s[0] <= step][-1]

    def fn(self, step: int) -> Callable:
        return self.stage(step)[2]


def stage_label(key: StageKey) -> str:
    """A stage key for people and results.json: plain, torchao, pqt, pqt(std=0.2165), ste."""
    if key is None or key == "torchao":
        return "plain" if key is None else "torchao"
    if key.mode == "ste":
        return "ste"
    return "pqt" if key.noise_std == key.replace(noise_std=None).noise_std else f"pqt(std={key.noise_std:.4g})"


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
