"""The main job's budget and presets: the cost arithmetic, the sizing of --steps auto, the time
limit, the autocast context, the corpus of the GPU preset. Nothing here compiles or trains
(tests/examples/test_train.py runs the job itself)."""

import math
import os
import sys

import pytest
import torch

import pqt_compile
from examples import train

sys.path.insert(0, os.path.dirname(train.__file__))  # the job's modules, as train.py imports them
import train_budget  # noqa: E402
import train_data  # noqa: E402
import train_loop  # noqa: E402
from train_arms import stage_plan  # noqa: E402
from train_budget import Costs, Deadline, RunShape  # noqa: E402

CFG = pqt_compile.PQTConfig(format="fp4_e2m1")
ARMS = ("baseline", "pqt", "ste", "pqt-ste")
COSTS = Costs(step_s={"plain": 0.02, "pqt": 0.03, "ste": 0.03, "torchao": 0.02}, compile_s=60.0, retrace_s=10.0,
              eval_batch_s=0.02, setup_s=20.0, write_s=5.0, source="test")


def shape(pretrain_runs=1, seeds=2):
    return RunShape(arms=ARMS, seeds=seeds, tokens_per_step=8192,
                    stages=lambda n: {k: stage_plan(k, CFG, n, 0.25) for k in ARMS},
                    pretrain_runs=pretrain_runs, pretrain_steps=1000, evals=lambda n: 4, grids=5, eval_batches=10)


def test_expected_seconds_by_part_worked_by_hand():
    parts = train_budget.expected_s(COSTS, shape(), 400)
    # compiles: pretraining's plain graph (new), baseline (Dynamo's entry reused: free), pqt and ste
    # (new), pqt-ste's pqt and ste stages (the same graphs for another model: retraced)
    assert parts["compiles"] == 3 * 60 + 2 * 10
    assert parts["pretraining"] == pytest.approx(1000 * 0.02)
    # per step 0.02 + 0.03 + 0.03 + 0.03, 400 steps, 2 seeds
    assert parts["fine-tuning"] == pytest.approx(0.11 * 400 * 2)
    # passes per seed: start 2 + 4 points x 2 x 4 arms + 4 more grids x 4 arms = 50; 10 batches each
    assert parts["evaluation"] == pytest.approx(50 * 2 * 10 * 0.02)
    assert parts["set-up"] == 20 and parts["writing"] == 5
    assert sum(parts.values()) == pytest.approx(353.0)


def test_size_steps_finds_the_most_that_fit():
    # 265 s fixed (353 - 88); 0.22 s per step (4 arms, 2 seeds): 375.1 s holds 500 steps, not 501
    assert train_budget.size_steps(COSTS, shape(), 375.1, 18, 100_000) == 500
    assert train_budget.size_steps(COSTS, shape(), 375.1, 18, 300) == 300  # capped
    assert train_budget.size_steps(COSTS, shape(), 100.0, 18, 1000) == 18  # nothing fits: the least (the limit stops it)
    with pytest.raises(ValueError, match="lo"):
        train_budget.size_steps(COSTS, shape(), 100.0, 20, 10)


def test_after_the_first_steps_only_what_is_left_is_counted():
    compiled = frozenset({("pretrain", None), ("baseline", None), ("pqt", CFG), ("ste", CFG.replace(mode="ste")),
                          ("pqt-ste", CFG)})
    assert train_budget.compile_counts(shape(pretrain_runs=0), 400, compiled) == (0, 1)  # pqt-ste's STE stage
    parts = train_budget.expected_s(COSTS, shape(pretrain_runs=0), 400, done_steps=8, compiled=compiled, started=True)
    assert parts["set-up"] == 0 and parts["pretraining"] == 0 and parts["compiles"] == 10
    assert parts["fine-tuning"] == pytest.approx(0.11 * (800 - 8))
    assert parts["evaluation"] == pytest.approx((100 - 2) * 10 * 0.02)  # the first starting point is done
    # a cached checkpoint: no pretraining, and the baseline compiles the plain graph itself
    assert train_budget.compile_counts(shape(pretrain_runs=0), 400) == (3, 2)


def test_an_arm_step_time_is_its_stages_mixed_or_its_measurement():
    costs = COSTS.replace(step_s={**COSTS.step_s, "ste": 0.05})
    plan = stage_plan("pqt-ste", CFG, 100, 0.25)
    assert train_budget.arm_step_s(costs, "pqt-ste", plan, 100) == pytest.approx((0.03 * 75 + 0.05 * 25) / 100)
    measured = costs.replace(step_s={**costs.step_s, "pqt-ste": 0.041})
    assert train_budget.arm_step_s(measured, "pqt-ste", plan, 100) == 0.041
    with pytest.raises(ValueError, match="seconds >= 0"):
        COSTS.replace(compile_s=-1.0)


def test_deadline_counts_from_its_start_on_its_clock():
    t = [100.0]
    d = Deadline(10.0, clock=lambda: t[0])
    assert d.left() == 10.0 and d.allows(10.0)
    t[0] = 107.0
    assert d.elapsed() == 7.0 and d.allows(3.0) and not d.allows(3.5)
    assert Deadline(None, clock=lambda: t[0]).left() == math.inf
    assert Deadline(10.0, clock=lambda: t[0], start=90.0).left() == -7.0  # counted from the process start
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="--time-limit"):
            Deadline(bad)


def test_autocast_takes_the_device_type_and_bf16_only_when_asked():
    ctx = train_loop.autocast("cuda:1", torch.bfloat16)  # torch.autocast refuses "cuda:1"; on a CPU-only build it warns
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with train_loop.autocast("cpu", torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
    with train_loop.autocast("cpu", torch.float32):
        assert lin(x).dtype == torch.float32


def test_the_gpu_preset_states_a_budget_that_fits_seven_minutes(tmp_path, capsys):
    a = train.parse_args(["--preset", "gpu-124m", "--dry-run", "--out", str(tmp_path)])
    assert (a.arch, a.size, a.batch, a.device, a.dtype, a.scenario) == ("gpt2", "gpt2-124m", 8, "cuda", "bf16", "finetune")
    assert train.SIZES[a.size] == (12, 768, 12, 1024) and a.seed_list == [0, 1] and a.pretrain_seed == 0
    assert a.arm_list == list(ARMS) and a.time_limit == 420 and a.steps == "auto" and a.no_export
    assert set(a.deploy_grids.split(",")) == {"int4:32", "fp4_e2m1:16", "nvfp4:16"}  # grids it was not trained for
    res = train.main(["--preset", "gpu-124m", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    b = res["budget"]
    assert b["tokens_per_step"] == 8 * 1024 and b["limit_s"] == 420
    cfg = train.pqt_config(a)
    job = train_loop.Job(a, cfg, train.deploy_grids(a, cfg), (None, None), train_budget.ASSUMED["cuda"], Deadline(420))
    n, s = b["planned_steps"], job.shape()
    budget = 420 * (1 - train_loop.SAFETY)
    assert s.pretrain_runs == 1 and a.min_steps < n
    assert sum(train_budget.expected_s(train_budget.ASSUMED["cuda"], s, n).values()) <= budget
    assert sum(train_budget.expected_s(train_budget.ASSUMED["cuda"], s, n + 1).values()) > budget  # the most that fit
    assert f"{n} steps = {train_budget.tokens(n * 8192)} tokens per arm and seed" in out and "of 420 s" in out
    # flags beside a preset override it
    b = train.parse_args(["--preset", "gpu-124m", "--dry-run", "--seeds", "0,1,2", "--steps", "300"])
    assert b.seed_list == [0, 1, 2] and b.steps == 300 and b.size == "gpt2-124m"


def test_bad_budget_arguments_are_refused_with_the_fix(capsys):
    for argv, msg in ((["--steps", "auto"], "--time-limit"),
                      (["--steps", "auto", "--time-limit", "60", "--calibrate-steps", "30"], "must not depend on the step count"),
                      (["--steps", "lots"], "number of steps or auto"),
                      (["--eval-every", "x"], "--eval-every"),
                      (["--time-limit", "0"], "seconds > 0")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert msg in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            train.parse_args(["--preset", "gpu-124m"])
        assert "--preset cpu-smoke" in capsys.readouterr().err


def test_the_whole_stdlib_corpus_leaves_out_tests_and_codec_tables():
    files = train_data.stdlib_files()
    assert files == train_data.stdlib_files() and len(files) > 100  # stable
    parts = [set(f.split(os.sep)[:-1]) for f in files]
    assert not any(p & {"test", "tests", "site-packages", "encodings"} for p in parts)
    ordered = sorted(files)
    assert files[-len(ordered[9::10]):] == ordered[9::10]  # every tenth file last: the validation tenth
    data = train_data.load_corpus(corpus="stdlib-all")
    assert len(data) > 2_000_000 and len(data) > 3 * len(train_data.load_corpus())
    with pytest.raises(SystemExit, match="--corpus"):
        train_data.load_corpus(corpus="nope")
