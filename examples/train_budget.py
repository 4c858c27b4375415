"""The main job's budget: what a run costs, its fine-tuning steps sized to a time limit, and the limit.

A run is set-up, compiles, pretraining (plain, one run shared by every seed or one per seed),
then per seed every arm's fine-tuning steps and evaluations, then the report. `expected_s`
prices each part from `Costs`: assumed up front (`ASSUMED`, each number with where it comes
from), measured once the first fine-tuning steps have run. `size_steps` finds the most
fine-tuning steps per arm and seed that fit the limit; `Deadline` stops the run cleanly when
the limit is near (examples/train_loop.py checks it before every training step).

NOTE [sizing without changing the run]: `--steps auto` fixes the step count twice: from the
assumed costs before training (so that the budget can be printed), and again after the first
`calibrate_steps` fine-tuning steps of the first seed, from their measured times. Those first
steps are inside the learning-rate warm-up, whose rate depends on the step only, not on the
step count, and the only other thing that depends on the count (pqt-ste's switch to STE) comes
later; so the run is the one that a fixed `--steps` equal to the final count would have made.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Optional, Sequence

__all__ = ["Costs", "ASSUMED", "PRESETS", "RunShape", "arm_step_s", "compile_counts", "expected_s", "size_steps",
           "budget_lines", "tokens", "Deadline", "TimeUp"]


@dataclass(frozen=True)
class Costs:
    """Seconds that each part of a run takes (assumed, or measured).

    step_s: one training step, by stage kind ("plain", "pqt", "ste", "torchao") when assumed,
        by arm name once measured (an arm's name wins over its kind).
    compile_s: compiling a training graph new to the process, with Inductor's caches cold (a
        fresh machine's case).
    retrace_s: compiling, for another model, a PQT/STE graph already compiled in this
        process ("retraced": Dynamo traces again; Inductor's and AOTAutograd's caches hit). A
        second plain `torch.compile` of the same class costs nothing: Dynamo reuses its entry
        (measured: 0.01 s).
    eval_batch_s: one validation batch, forward only, eager, plus its share of quantizing.
    setup_s: imports, corpus, model build, device start. write_s: report, plot, results.json.
    source: where the numbers come from, printed with them.
    """

    step_s: Mapping[str, float]
    compile_s: float
    retrace_s: float
    eval_batch_s: float
    setup_s: float
    write_s: float
    source: str

    def __post_init__(self) -> None:
        for k, v in {**self.step_s, "compile_s": self.compile_s, "retrace_s": self.retrace_s,
                     "eval_batch_s": self.eval_batch_s, "setup_s": self.setup_s, "write_s": self.write_s}.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Costs: {k} must be a finite number of seconds >= 0, got {v!r}")

    def replace(self, **kw) -> "Costs":
        return dataclasses.replace(self, **kw)


#: Costs assumed before anything is measured, by device type. The GPU's step times are the ones
#: measured on one H200 (../shared/design/gpu-first-run.md: GPT-2 124M with vocab 50257, 8 x 1024
#: tokens, bf16; plain Inductor 25.2 ms, PQT 32.9 ms); STE is assumed to cost what PQT does. Its
#: compile and evaluation times are guesses (no compile of this model on a GPU has been timed):
#: the run replaces every number with its own measurement after its first steps. The CPU's: the
#: tiny GPT-2 (batch 4, seq 64, fp32) on the project's 2-core machine, torch 2.13, shared with
#: other work: cold compiles 30-90 s each (plain, PQT, STE alike within that spread), a second
#: model's PQT/STE compile 1-5 s, steps 9-35 ms.
ASSUMED = {
    "cuda": Costs(step_s={"plain": 0.0252, "pqt": 0.0329, "ste": 0.0329, "torchao": 0.0261}, compile_s=60.0,
                  retrace_s=10.0, eval_batch_s=0.02, setup_s=25.0, write_s=5.0,
                  source="assumed: steps from gpu-first-run.md (H200, GPT-2 124M, 8 x 1024 tokens); "
                         "compiles and evaluation guessed (no GPU run yet)"),
    "cpu": Costs(step_s={"plain": 0.009, "pqt": 0.013, "ste": 0.013, "torchao": 0.010}, compile_s=45.0,
                 retrace_s=1.5, eval_batch_s=0.005, setup_s=5.0, write_s=2.0,
                 source="assumed: the tiny GPT-2 on the project's 2-core CPU (batch 4, seq 64)"),
}

#: Named runs (`--preset`): argument defaults that flags given on the command line override.
#: gpu-124m: GPT-2 124M's transformer (12 x 768, 12 heads, seq 1024; the byte vocabulary, so
#: 86M parameters where GPT-2's 50257-token embedding makes 124M) on one CUDA GPU in 7 minutes.
#: cpu-smoke: the same code path on the tiny model for seconds of training (CI runs it): one
#: thread, so that every run is bit for bit the same (with two, BLAS may split a sum differently
#: under load, and pqt-ste's losses then leave pqt's by an ulp); a limit that load cannot reach.
PRESETS: dict[str, dict] = {
    "gpu-124m": dict(arch="gpt2", size="gpt2-124m", batch=8, device="cuda", dtype="bf16", scenario="finetune",
                     corpus="stdlib-all", pretrain_steps=1000, pretrain_lr=6e-4, pretrain_seed=0, lr=1e-4, warmup=20,
                     steps="auto", calibrate_steps=8, time_limit=420.0, seeds="0,1", arms="baseline,pqt,ste,pqt-ste",
                     format="fp4_e2m1", block_size=None, lower_format="int3", deploy_grids="int4:32,fp4_e2m1:16,nvfp4:16",
                     eval_batches=16, eval_every="auto", evals=4, no_export=True, out="runs/gpu-124m"),
    "cpu-smoke": dict(arch="gpt2", size="tiny", batch=4, device="cpu", dtype="fp32", scenario="finetune",
                      corpus="stdlib", pretrain_steps=3, pretrain_seed=0, steps="auto", max_steps=6, calibrate_steps=2,
                      time_limit=1200.0, threads=1, seeds="0,1", arms="baseline,pqt,ste,pqt-ste", format="fp4_e2m1",
                      block_size=None, lower_format="int3", deploy_grids="int4:16,nvfp4:16", eval_batches=2,
                      eval_every="auto", evals=2, out="runs/cpu-smoke"),
}


def tokens(n: float) -> str:
    """A token count for people: 8192 -> '8.2k', 4.1e6 -> '4.1M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class RunShape:
    """What a run does, as far as its cost goes.

    stages(steps) -> {arm: [(first step, compile key)]}: every arm's stages for a step count
        (train_arms.stage_plan). A key is what the stage compiles: None for plain torch.compile,
        "torchao" for torchao's prepared model, else the stage's PQTConfig (equal keys: one graph).
    pretrain_runs: pretrainings still to run (0 when cached), pretrain_steps each.
    evals(steps): evaluation points per seed during fine-tuning, 2 passes per arm each (clean,
        quantized); once per seed the starting point (2 passes); at the end every further deploy
        grid (grids - 1 passes per arm: the target's loss is the last point's).
    """

    arms: Sequence[str]
    seeds: int
    tokens_per_step: int
    stages: Callable[[int], Mapping[str, Sequence[tuple[int, Optional[Hashable]]]]]
    pretrain_runs: int
    pretrain_steps: int
    evals: Callable[[int], int]
    grids: int
    eval_batches: int


def _kind(key: Optional[Hashable]) -> str:
    if key is None or key == "torchao":
        return "plain" if key is None else "torchao"
    return "ste" if getattr(key, "mode", None) == "ste" else "pqt"


def arm_step_s(costs: Costs, arm: str, stages: Sequence[tuple[int, Optional[Hashable]]], steps: int) -> float:
    """Mean seconds per step of `arm`: measured if `costs` has it by name, else its stages'
    kinds weighted by their share of the steps."""
    if arm in costs.step_s:
        return costs.step_s[arm]
    bounds = [first for first, _ in stages] + [steps]
    total = sum(costs.step_s[_kind(key)] * max(0, min(end, steps) - first)
                for (first, key), end in zip(stages, bounds[1:]))
    return total / max(1, steps)


def compile_counts(shape: RunShape, steps: int, compiled: frozenset = frozenset(),
                   pretraining: bool = True) -> tuple[int, int]:
    """(new, retraced): compiles still to come. `compiled` holds (owner, key) pairs already
    compiled in this process (owner: an arm, or "pretrain"). Arms persist across seeds, so each
    (arm, key) compiles once per run. The first use of a key compiles a new graph; a later PQT/STE
    one is retraced (Dynamo traces again, Inductor's caches hit); a later plain or torchao one is
    free (Dynamo reuses its entry for another model of the same class)."""
    todo = [("pretrain", None)] if pretraining else []
    stages = shape.stages(steps)
    todo += [(arm, key) for arm in shape.arms for _, key in stages[arm]]
    keys = {key for _, key in compiled}
    new = retraced = 0
    for owner, key in todo:
        if (owner, key) in compiled:
            continue
        if key not in keys:
            new += 1
            keys.add(key)
        elif _kind(key) in ("pqt", "ste"):
            retraced += 1
    return new, retraced


def expected_s(costs: Costs, shape: RunShape, steps: int, *, done_steps: int = 0,
               compiled: frozenset = frozenset(), started: bool = False) -> dict[str, float]:
    """Seconds still to spend, by part, on a run of `steps` fine-tuning steps per arm and seed.

    started: set-up and the first seed's starting evaluation are behind us, and `done_steps` of
    its fine-tuning steps; `compiled` as in `compile_counts`. Pretraining: `shape.pretrain_runs`
    runs still to do (those cached already are not counted).
    """
    stages = shape.stages(steps)
    new, retraced = compile_counts(shape, steps, compiled, pretraining=shape.pretrain_runs > 0)
    per_step = sum(arm_step_s(costs, arm, stages[arm], steps) for arm in shape.arms)
    n = len(shape.arms)
    passes = (2 + shape.evals(steps) * 2 * n + (shape.grids - 1) * n) * shape.seeds - (2 if started else 0)
    return {
        "set-up": 0.0 if started else costs.setup_s,
        "compiles": new * costs.compile_s + retraced * costs.retrace_s,
        "pretraining": shape.pretrain_runs * shape.pretrain_steps * costs.step_s["plain"],
        "fine-tuning": per_step * (shape.seeds * steps - done_steps),
        "evaluation": costs.eval_batch_s * shape.eval_batches * passes,
        "writing": costs.write_s,
    }


def size_steps(costs: Costs, shape: RunShape, budget_s: float, lo: int, hi: int, **state) -> int:
    """The most fine-tuning steps per arm and seed in [lo, hi] whose expected remaining cost
    (`expected_s` with `state`) fits `budget_s`; lo if none does (the deadline then stops the
    run). A binary search: the cost grows with the step count."""
    if not 1 <= lo <= hi:
        raise ValueError(f"size_steps: need 1 <= lo <= hi, got lo {lo}, hi {hi}")
    fits = lambda n: sum(expected_s(costs, shape, n, **state).values()) <= budget_s  # noqa: E731
    if not fits(lo):
        return lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def budget_lines(costs: Costs, shape: RunShape, steps: int, parts: Mapping[str, float], *, limit_s: Optional[float],
                 auto: bool, batch: int, seq: int, compiled: frozenset = frozenset()) -> list[str]:
    """The budget as printed before training: tokens, steps, and the expected seconds by part."""
    new, retraced = compile_counts(shape, steps, compiled, pretraining=shape.pretrain_runs > 0)
    ft = steps * shape.tokens_per_step
    lines = [f"budget ({'time limit ' + format(limit_s, 'g') + ' s' if limit_s else 'no time limit'}; {costs.source}):",
             f"  a step: {batch} x {seq} = {tokens(shape.tokens_per_step)} tokens"]
    if shape.pretrain_runs:
        lines.append(f"  pretraining: {shape.pretrain_runs} run{'s' if shape.pretrain_runs > 1 else ''} x "
                     f"{shape.pretrain_steps} steps = {tokens(shape.pretrain_steps * shape.tokens_per_step)} tokens each, plain")
    lines.append(f"  fine-tuning: {shape.seeds} seed{'s' if shape.seeds > 1 else ''} x {len(shape.arms)} arms "
                 f"({', '.join(shape.arms)}), {steps} steps = {tokens(ft)} tokens per arm and seed"
                 + (" (auto: the most that fit the limit; sized again from the first steps' times)" if auto else ""))
    lines.append(f"  compiles: {new} new graph{'s' if new != 1 else ''} x {costs.compile_s:g} s, "
                 f"{retraced} retraced for another model x {costs.retrace_s:g} s")
    total = sum(parts.values())
    lines.append("  expected: " + " + ".join(f"{k} {v:.0f} s" for k, v in parts.items() if v) + f" = {total:.0f} s"
                 + (f" of {limit_s:g} s" if limit_s else ""))
    return lines


class TimeUp(Exception):
    """Raised inside the job when the time limit leaves no room for the next piece of work."""


class Deadline:
    """A time limit in seconds from `start` on `clock` (time.monotonic by default); None: no limit.

    The job asks `allows(cost)` before each training step with what that step and the work that
    must follow a stop (the final evaluation, the report) are expected to cost; the final
    evaluation of the seed in progress always runs, so the limit is exceeded by at most the
    error in that estimate.
    """

    def __init__(self, limit_s: Optional[float], clock: Callable[[], float] = time.monotonic,
                 start: Optional[float] = None) -> None:
        if limit_s is not None and not (math.isfinite(limit_s) and limit_s > 0):
            raise ValueError(f"--time-limit {limit_s!r}: give a number of seconds > 0 (or none for no limit)")
        self.limit_s, self.clock = limit_s, clock
        self.start = clock() if start is None else start

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return math.inf if self.limit_s is None else self.limit_s - self.elapsed()

    def allows(self, cost_s: float) -> bool:
        return self.left() >= cost_s
