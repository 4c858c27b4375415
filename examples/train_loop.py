"""The main job's training: plain pretraining (cached), then every arm from the same weights on the
same batches, seed by seed, within a time limit (examples/train.py parses and reports).

NOTE [one compile per graph and run]: a run compiles three graphs whatever its seeds: plain
(pretraining; the baseline's torch.compile of another model of the same class reuses Dynamo's
entry for free), PQT and STE (pqt-ste's stages retrace them for its own model: Dynamo traces
again, Inductor's and AOTAutograd's caches hit). The arms outlive a seed (train_arms.Arm.reset
loads the next seed's starting weights into the same parameters), so a later seed compiles
nothing; `--pretrain-seed` makes one pretraining serve every seed. Each stage's first step is
timed apart from the others (results.json "compiles"; steps that compiled are left out of the
medians and of the throughput).

NOTE [the time limit]: `--steps auto` sizes the fine-tuning to the limit after its first steps
(train_budget, NOTE [sizing without changing the run]). Before every training step the job asks
the deadline for that step's cost plus what a stop still needs (the last evaluation point,
the deploy grids, the report); before a further seed, for the whole seed's. When the answer is
no it stops there, evaluates what it trained, and says where it stopped. The final evaluation
always runs, so the limit can be exceeded by the error in its estimate (measured: the first
seed's starting evaluation times one pass).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import pqt_compile
import pqt_compile.reference
from pqt_compile import PQTConfig
from train_arms import Arm, quantized, stage_label, stage_plan
from train_budget import Costs, Deadline, RunShape, TimeUp, arm_step_s, budget_lines, expected_s, size_steps
from train_data import SIZES, build_model, get_batch

__all__ = ["autocast", "lm_loss", "evaluate", "lr_at", "Job", "SAFETY"]

#: The share of the time limit kept back when sizing the run: the error of the cost estimates.
SAFETY = 0.05
OnStep = Callable[[str, int, int], None]  # (phase "pretrain" | "finetune", seed, step) after each step


def autocast(device: str, dtype: torch.dtype):
    """bf16 autocast on the device's type ("cuda:1" -> "cuda": torch.autocast takes the type
    only); disabled for fp32."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: torch.Tensor, batch: int, seq: int, n_batches: int, device: str,
             dtype: torch.dtype) -> float:
    """Mean validation loss over fixed batches (the same for every model)."""
    g = torch.Generator().manual_seed(1234)
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(n_batches):
        x, y = get_batch(val, batch, seq, g)
        with autocast(device, dtype):
            losses.append(lm_loss(model, x.to(device), y.to(device)).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:  # independent of `steps`: NOTE [sizing without changing the run]
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":  # time the step, not its launch
        torch.cuda.synchronize()


class Job:
    """One run of the main job: its arms, pretraining, seeds, budget and deadline."""

    def __init__(self, a: argparse.Namespace, cfg: PQTConfig, grids: dict, corpus: tuple, costs: Costs,
                 deadline: Deadline, on_step: Optional[OnStep] = None, log: Optional[Callable[[str], None]] = None) -> None:
        self.a, self.cfg, self.grids, self.costs, self.deadline = a, cfg, grids, costs, deadline
        self.train_tokens, self.val_tokens = corpus
        self.seq = a.seq or SIZES[a.size][3]
        self.dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        self.on_step = on_step or (lambda *_: None)
        self.log = log or (lambda line: print(line, flush=True))  # flushed: a run killed at its limit keeps its log
        self.arms: dict[str, Arm] = {}
        self.compiles: list[dict] = []  # every stage's first call: arm, stage, seconds, kind (_compiled)
        self.compiled_keys: set = set()  # what this process has compiled (None: plain)
        self.stopped: Optional[dict] = None
        self.budget: dict = {}
        self.steps = a.steps if a.steps != "auto" else None
        self.bar = None

    # -- the budget ----------------------------------------------------------------------------------
    def pretrain_path(self, seed: int) -> str:
        a = self.a
        s = seed if a.pretrain_seed is None else a.pretrain_seed
        data = os.path.basename(a.data) if a.data else a.corpus
        if data == "stdlib-all":  # its bytes are the Python version's library
            data += f"-py{sys.version_info.major}.{sys.version_info.minor}"
        dtype = "" if a.dtype == "fp32" else f"_{a.dtype}"  # (fp32 unnamed: the keys of earlier runs hold)
        key = f"{a.arch}_{a.size}_seq{self.seq}_b{a.batch}_s{s}_{a.pretrain_steps}_{a.pretrain_lr:g}_{data}{dtype}"
        return os.path.join(a.pretrain_dir or a.out, f"pretrain_{key}.pt")

    def every(self, steps: int) -> int:
        a = self.a
        return max(1, round(steps / a.evals)) if a.eval_every == "auto" else int(a.eval_every)

    def eval_points(self, steps: int) -> int:
        e = self.every(steps)
        first = self.a.calibrate_steps if self.a.steps == "auto" else 0  # none before the sizing
        return len({s for s in range(first + 1, steps + 1) if s % e == 0} | {steps})

    def shape(self) -> RunShape:
        a = self.a
        todo = {self.pretrain_path(s) for s in a.seed_list} if a.scenario == "finetune" else set()
        return RunShape(arms=tuple(a.arm_list), seeds=len(a.seed_list), tokens_per_step=a.batch * self.seq,
                        stages=lambda n: {k: stage_plan(k, self.cfg, n, a.ste_fraction) for k in a.arm_list},
                        pretrain_runs=sum(not os.path.exists(p) for p in todo), pretrain_steps=a.pretrain_steps,
                        evals=self.eval_points, grids=len(self.grids), eval_batches=a.eval_batches)

    def plan(self) -> None:
        """Size `--steps auto` from the assumed costs and print the budget."""
        a, shape = self.a, self.shape()
        limit = self.deadline.limit_s
        if self.steps is None:
            self.steps = size_steps(self.costs, shape, limit * (1 - SAFETY), a.min_steps, a.max_steps)
        parts = expected_s(self.costs, shape, self.steps)
        self.budget = {"limit_s": limit, "assumed": _costs_json(self.costs), "planned_steps": self.steps,
                       "expected_s": parts, "tokens_per_step": shape.tokens_per_step}
        if a.preset or limit or a.steps == "auto":
            for line in budget_lines(self.costs, shape, self.steps, parts, limit_s=limit, auto=a.steps == "auto",
                                     batch=a.batch, seq=self.seq):
                self.log(line)
            if limit and sum(parts.values()) > limit:
                self.log(f"  the plan does not fit the {limit:g} s limit: the run will stop early with partial results")

    def calibrate(self, done: int) -> None:
        """After the first `done` steps of the first seed: the costs as measured, then (--steps
        auto) the step count sized again from them."""
        a, shape = self.a, self.shape()
        steps_s = {k: statistics.median(_timed(arm) or arm.step_s) for k, arm in self.arms.items()}
        new = [c["s"] for c in self.compiles if c["kind"] == "new"]
        retraced = [c["s"] for c in self.compiles if c["kind"] == "retraced"]
        self.costs = self.costs.replace(step_s={**self.costs.step_s, **steps_s}, compile_s=max(new, default=self.costs.compile_s),
                                        retrace_s=max(retraced, default=self.costs.retrace_s),
                                        source=f"measured over the first {done} steps")
        self.budget["measured"] = _costs_json(self.costs)
        if a.steps != "auto":
            return
        compiled = frozenset((k, key) for k, arm in self.arms.items() for key in arm.called)
        budget = self.deadline.left() - SAFETY * self.deadline.limit_s
        lo = max(a.min_steps, done + 1)
        steps = size_steps(self.costs, shape, budget, lo, max(lo, a.max_steps), done_steps=done, compiled=compiled,
                           started=True)
        parts = expected_s(self.costs, shape, steps, done_steps=done, compiled=compiled, started=True)
        self.budget["resized"] = {"after_steps": done, "steps": steps,
                                  "elapsed_s": self.deadline.elapsed(), "expected_rest_s": parts}
        self.log(f"sized after {done} steps (measured per step: "
                 + ", ".join(f"{k} {1e3 * s:.1f} ms" for k, s in steps_s.items())
                 + f"; evaluation {self.costs.eval_batch_s * a.eval_batches:.2f} s per pass): {steps} steps per arm "
                 f"and seed, expected end at {self.deadline.elapsed() + sum(parts.values()):.0f} s")
        self.steps = steps
        for arm in self.arms.values():
            arm.set_steps(steps)
        if self.bar is not None:
            self.bar.total = steps * len(a.seed_list)
            self.bar.refresh()

    def step_cost_s(self) -> float:
        """Expected seconds of one fine-tuning step of every arm."""
        return sum(arm_step_s(self.costs, k, stage_plan(k, self.cfg, self.steps, self.a.ste_fraction), self.steps)
                   for k in self.a.arm_list)

    def seed_cost_s(self, seed: int) -> float:
        """Expected seconds of one more seed: its pretraining if not cached, steps, evaluations, report."""
        a, n = self.a, len(self.a.arm_list)
        passes = 2 + self.eval_points(self.steps) * 2 * n + (len(self.grids) - 1) * n
        pre = (a.pretrain_steps * self.costs.step_s["plain"]
               if a.scenario == "finetune" and not os.path.exists(self.pretrain_path(seed)) else 0.0)
        return self.step_cost_s() * self.steps + passes * self.costs.eval_batch_s * a.eval_batches + pre + self.costs.write_s

    def reserve_s(self) -> float:
        """What must still run after a stop: the last evaluation point, the deploy grids, the report."""
        n = len(self.arms) or len(self.a.arm_list)
        passes = n * (2 + len(self.grids) - 1)
        return passes * self.costs.eval_batch_s * self.a.eval_batches + self.costs.write_s

    # -- training ------------------------------------------------------------------------------------
    def pretrained(self, seed: int) -> dict:
        """The finetune scenario's starting weights: plain training for --pretrain-steps, cached."""
        a = self.a
        path = self.pretrain_path(seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            return torch.load(path)
        s = seed if a.pretrain_seed is None else a.pretrain_seed
        torch.manual_seed(s)
        model = build_model(a.arch, a.size, self.seq).to(a.device)
        step_fn = torch.compile(model)
        opt = torch.optim.AdamW(model.parameters(), lr=a.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=True if torch.device(a.device).type == "cuda" else None)
        g = torch.Generator().manual_seed(10_000 + s)  # not the fine-tuning batches
        self.log(f"pretraining {a.pretrain_steps} steps (seed {s}), cached as {path}")
        for step in range(a.pretrain_steps):
            if not self.deadline.allows(self.costs.step_s["plain"] + self.costs.write_s):
                raise TimeUp(f"pretraining stopped at step {step} of {a.pretrain_steps}: the time limit")
            for group in opt.param_groups:
                group["lr"] = lr_at(step, a.pretrain_steps, a.pretrain_lr, 50)
            x, y = get_batch(self.train_tokens, a.batch, self.seq, g)
            t0 = time.perf_counter()
            with autocast(a.device, self.dtype):
                loss = lm_loss(step_fn, x.to(a.device), y.to(a.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(a.device)
            if step == 0 and None not in self.compiled_keys:
                self._compiled("pretrain", None, time.perf_counter() - t0)
            self.on_step("pretrain", seed, step)
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(state, path)
        return state

    def _compiled(self, arm: str, key, seconds: float) -> None:
        """Record a stage's first call: "new" (a graph new to this process: compiled, unless
        Inductor's on-disk cache has it from an earlier process), "retraced" (a PQT/STE graph
        compiled before for another model: Dynamo traces again, Inductor's caches hit) or "reused"
        (a plain graph: Dynamo's entry serves another model of the same class)."""
        if key not in self.compiled_keys:
            kind = "new"
        else:
            kind = "reused" if key is None or key == "torchao" else "retraced"
        self.compiled_keys.add(key)
        self.compiles.append({"arm": arm, "stage": stage_label(key), "s": seconds, "kind": kind})
        self.log(f"compiled {arm} ({stage_label(key)}): first step {seconds:.1f} s ({kind})")

    def start_arms(self, seed: int) -> None:
        """Every arm at the seed's starting weights: the pretrained checkpoint (finetune) or a random
        initialisation under the seed (scratch). Arms are built on the first seed and reset after."""
        a = self.a
        torch.manual_seed(seed)
        pqt_compile.manual_seed(seed)
        init = build_model(a.arch, a.size, self.seq)
        if a.scenario == "finetune":
            init.load_state_dict(self.pretrained(seed))
        init = init.to(a.device)
        if not self.arms:
            self.axes = pqt_compile.reference.sampled_axes(init, self.cfg)  # the same names in every arm
        fused = torch.device(a.device).type == "cuda"
        old, state = self.arms, init.state_dict()
        self.arms = {}
        for k in a.arm_list:
            if k in old and old[k].reusable:  # the same parameters, so the compiled callables still serve
                self.arms[k] = old[k]
                old[k].reset(state, a.lr)
            else:  # a copy of the starting model (torchao's is prepared from it anew)
                self.arms[k] = Arm(k, copy.deepcopy(init), self.cfg, self.steps, a.lr, a.ste_fraction, fused)

    def train_seed(self, index: int, seed: int) -> dict:
        """Train every arm for one seed (stopping early if the time runs out); its numbers."""
        a = self.a
        self.start_arms(seed)
        arms, axes = self.arms, self.axes
        ev = lambda m: evaluate(m, self.val_tokens, a.batch, self.seq, a.eval_batches, a.device, self.dtype)  # noqa: E731
        # Each arm its own position in one seed stream: every PQT arm draws the same noise at the
        # same step (a paired comparison), whichever other arms run beside it.
        start = pqt_compile.seed_state()
        noise_at = {k: dict(start) for k in arms}
        t0 = time.perf_counter()
        first = next(iter(arms.values())).model  # every arm holds the starting weights now
        with quantized(first, axes, self.cfg) as q:
            q0 = ev(q)
        c0 = ev(first)
        if index == 0:  # measured: what one evaluation pass costs (for the budget)
            self.costs = self.costs.replace(eval_batch_s=(time.perf_counter() - t0) / (2 * a.eval_batches))
        for arm in arms.values():
            arm.curve.append((0, c0, q0))
        g = torch.Generator().manual_seed(seed)
        order = list(arms)
        step = 0
        need = self.step_cost_s() + self.reserve_s()  # a step of every arm, then what follows a stop
        while step < self.steps:
            if not self.deadline.allows(need):
                self.stopped = {"phase": "fine-tuning", "seed": seed, "step": step, "of": self.steps,
                                "elapsed_s": self.deadline.elapsed(), "limit_s": self.deadline.limit_s}
                self.log(f"time limit: seed {seed} stopped after {step} of {self.steps} steps")
                break
            x, y = get_batch(self.train_tokens, a.batch, self.seq, g)
            x, y = x.to(a.device), y.to(a.device)
            for k in order[step % len(order):] + order[: step % len(order)]:  # rotate: alike timing
                self._train_step(arms[k], step, x, y, noise_at)
            self.on_step("finetune", seed, step)
            step += 1
            if index == 0 and step == a.calibrate_steps:
                self.calibrate(step)
                need = self.step_cost_s() + self.reserve_s()
            if step > (a.calibrate_steps if a.steps == "auto" else 0) and (step % self.every(self.steps) == 0
                                                                            or step == self.steps):
                self._eval_point(step, ev)
                if self.bar is None:
                    self.log(f"seed {seed} step {step}/{self.steps} ({self.deadline.elapsed():.0f} s): val loss clean / "
                             f"{self.cfg.format} " + ", ".join(f"{k} {arm.curve[-1][1]:.4f} / {arm.curve[-1][2]:.4f}"
                                                               for k, arm in arms.items()))
            if self.bar is not None:
                self.bar.set_postfix({k: f"{arm.train_loss[-1]:.3f}" for k, arm in arms.items()})
                self.bar.update(1)
        if arms[order[0]].curve[-1][0] != step:
            self._eval_point(step, ev)
        return self._seed_numbers(seed, step, ev)

    def _train_step(self, arm: Arm, step: int, x: torch.Tensor, y: torch.Tensor, noise_at: dict) -> None:
        a = self.a
        for group in arm.opt.param_groups:
            group["lr"] = lr_at(step, self.steps, a.lr, a.warmup)
        pqt_compile.set_seed_state(noise_at[arm.name])
        _, key, fn = arm.stage(step)
        compiling = key not in arm.called
        t0 = time.perf_counter()
        with autocast(a.device, self.dtype):
            loss = lm_loss(fn, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(arm.model.parameters(), 1.0)
        arm.opt.step()
        arm.opt.zero_grad(set_to_none=True)
        noise_at[arm.name] = pqt_compile.seed_state()
        _sync(a.device)
        seconds = time.perf_counter() - t0
        if compiling:
            arm.called.add(key)
            arm.compile_steps.add(len(arm.step_s))
            self._compiled(arm.name, key, seconds)
        arm.step_s.append(seconds)
        arm.train_loss.append(loss.item())

    def _eval_point(self, step: int, ev) -> None:
        for arm in self.arms.values():
            with quantized(arm.model, self.axes, self.cfg) as q:
                qloss = ev(q)
            arm.curve.append((step, ev(arm.model), qloss))

    def _seed_numbers(self, seed: int, steps_done: int, ev) -> dict:
        out: dict = {"seed": seed, "steps": steps_done, "steps_planned": self.steps,
                     "complete": steps_done == self.steps, "train_loss": {}, "val_curve": {}, "eval": {},
                     "step_ms": {}, "compile_steps": {}, "step_ms_median": {}, "tokens_per_s": {}}
        tokens = self.a.batch * self.seq
        for k, arm in self.arms.items():
            out["train_loss"][k] = arm.train_loss
            out["val_curve"][k] = arm.curve
            e = {"clean": arm.curve[-1][1]}
            for label, gcfg in self.grids.items():
                if gcfg == self.cfg:  # the target grid: the last point's quantized loss
                    e[label] = arm.curve[-1][2]
                    continue
                with quantized(arm.model, self.axes, gcfg) as q:
                    e[label] = ev(q)
            out["eval"][k] = e
            out["step_ms"][k] = [round(1e3 * t, 3) for t in arm.step_s]
            out["compile_steps"][k] = sorted(arm.compile_steps)
            timed = _timed(arm)
            med = statistics.median(timed) if timed else float("nan")
            out["step_ms_median"][k] = 1e3 * med
            out["tokens_per_s"][k] = tokens / med if timed else float("nan")
        base = self.arms["baseline"]
        out["step_time_ratio_median"] = {}
        for k, arm in self.arms.items():  # paired by step: both timed, neither compiling
            r = [p / b for i, (p, b) in enumerate(zip(arm.step_s, base.step_s))
                 if i and i not in arm.compile_steps and i not in base.compile_steps]
            out["step_time_ratio_median"][k] = statistics.median(r) if r else float("nan")
        return out

    def run(self) -> list[dict]:
        """Every seed, while the time lasts; the seeds' numbers (the last one maybe stopped early)."""
        a = self.a
        per_seed: list[dict] = []
        for index, seed in enumerate(a.seed_list):
            if index and not self.deadline.allows(need := self.seed_cost_s(seed)):
                self.stopped = {"phase": "seeds", "seed": seed, "step": 0, "of": self.steps, "needed_s": need,
                                "elapsed_s": self.deadline.elapsed(), "limit_s": self.deadline.limit_s}
                self.log(f"time limit: seed {seed} not started (needs about {need:.0f} s, {self.deadline.left():.0f} s left)")
                break
            try:
                per_seed.append(self.train_seed(index, seed))
            except TimeUp as e:
                self.stopped = {"phase": "pretraining", "seed": seed, "reason": str(e),
                                "elapsed_s": self.deadline.elapsed(), "limit_s": self.deadline.limit_s}
                self.log(f"time limit: {e}")
                break
            if self.stopped:
                break
        return per_seed


def _timed(arm: Arm) -> list[float]:
    """An arm's step times without its compiling steps and each seed's first step (optimizer state
    allocated, caches warming)."""
    return [s for i, s in enumerate(arm.step_s) if i and i not in arm.compile_steps]


def _costs_json(c: Costs) -> dict:
    return {"step_s": dict(c.step_s), "compile_s": c.compile_s, "retrace_s": c.retrace_s,
            "eval_batch_s": c.eval_batch_s, "setup_s": c.setup_s, "write_s": c.write_s, "source": c.source}
