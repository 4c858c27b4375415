"""The training example's pieces, on tiny settings (the full run is the README's main job)."""

import json
import os
import sys
import time

import pytest
import torch

import pqt_compile
from examples import train

sys.path.insert(0, os.path.dirname(train.__file__))  # train_arms, as train.py imports it

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch


def test_corpus_is_the_fixed_stdlib_list_and_splits():
    data = train.load_corpus()
    assert len(data) > 500_000 and data == train.load_corpus()  # stable
    tr, va = train.split(data)
    assert tr.dtype == torch.long and int(tr.max()) < 256
    assert len(va) == int(len(data) * 0.1) and len(tr) + len(va) == len(data)


def test_own_data_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"hello world " * 200)
    assert train.load_corpus(str(p)) == b"hello world " * 200
    (tmp_path / "small.txt").write_bytes(b"hi")
    with pytest.raises(SystemExit, match="at least 1 KiB"):
        train.load_corpus(str(tmp_path / "small.txt"))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_models_build_from_configs(arch):
    m = train.build_model(arch, "tiny", 64)
    out = m(torch.randint(0, 256, (2, 64)), use_cache=False).logits
    assert out.shape == (2, 64, 256)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The CPU smoke run (`--preset cpu-smoke`): the GPU preset's code path on the tiny model. One
    run serves every test below (three graphs compiled: plain, PQT, STE)."""
    torch._dynamo.reset()
    out = tmp_path_factory.mktemp("smoke")
    before = _process_settings()
    t0 = time.monotonic()
    res = train.main(["--preset", "cpu-smoke", "--out", str(out), "--no-progress"])
    return out, res, time.monotonic() - t0, before


def _process_settings():
    """What the job sets for itself and must give back: threads, and the CUDA matmul precision
    (merely setting it, even to its value, changes Inductor's cache key for every later compile)."""
    return torch.get_num_threads(), getattr(torch.backends.cuda.matmul, "fp32_precision", None)


def test_the_smoke_run_end_to_end(smoke):
    """The finetune scenario with two seeds: one cached pretraining for both, every arm from it on
    the same batches, clean and quantized curves, the aggregate over seeds, the verdict, the
    throughput, the budget sized after the first steps, the exports."""
    out, res, _, settings_before = smoke
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert [r["seed"] for r in saved["per_seed"]] == [0, 1] and saved["stopped"] is None
    first = saved["per_seed"][0]
    assert first["steps"] == first["steps_planned"] == 6 and first["complete"]
    for k in ("baseline", "pqt", "ste", "pqt-ste"):  # the baseline is always there
        assert len(first["train_loss"][k]) == 6
        assert [p[0] for p in first["val_curve"][k]] == [0, 3, 6]  # (step, clean, quantized): the start, 2 evaluations
        assert first["val_curve"][k][0] == first["val_curve"]["baseline"][0]  # the same starting weights
        assert set(first["eval"][k]) == {"clean", "fp4_e2m1", "int3", "int4:16", "nvfp4:16"}
        assert first["eval"][k]["clean"] == pytest.approx(res["per_seed"][0]["eval"][k]["clean"])
        assert first["eval"][k]["clean"] != first["eval"][k]["fp4_e2m1"]  # quantization did something
        assert first["tokens_per_s"][k] == pytest.approx(4 * 64 / (first["step_ms_median"][k] / 1e3))
        assert first["tokens_per_s"][k] > 0
    assert first["train_loss"]["baseline"] != first["train_loss"]["pqt"] != first["train_loss"]["ste"]
    # pqt-ste is pqt until its STE stage (step 4 of 6): the same noise at the same step, whatever
    # other arms ran in between, so the same losses; then it differs
    assert first["train_loss"]["pqt-ste"][:4] == first["train_loss"]["pqt"][:4]
    assert first["train_loss"]["pqt-ste"][4:] != first["train_loss"]["pqt"][4:]
    assert first["train_loss"]["baseline"][0] == pytest.approx(first["train_loss"]["pqt"][0], rel=0.05)  # same start
    second = saved["per_seed"][1]
    assert second["train_loss"]["baseline"] != first["train_loss"]["baseline"]  # other batches
    assert second["val_curve"]["baseline"][0] == first["val_curve"]["baseline"][0]  # from the same checkpoint
    assert len(list(out.glob("pretrain_*.pt"))) == 1  # one pretraining, shared by both seeds
    # Each graph compiled once in the run: seed 1 reuses seed 0's arms (no compile, no retrace).
    assert first["compile_steps"]["pqt-ste"] == [0, 4] and first["compile_steps"]["baseline"] == [0]
    assert all(c == [] for c in second["compile_steps"].values()) and len(second["step_ms"]["pqt"]) == 6
    assert [(c["arm"], c["stage"], c["kind"]) for c in saved["compiles"]] == [
        ("pretrain", "plain", "new"), ("baseline", "plain", "reused"), ("pqt", "pqt", "new"), ("ste", "ste", "new"),
        ("pqt-ste", "pqt", "retraced"), ("pqt-ste", "ste", "retraced")]
    b = saved["budget"]
    assert b["limit_s"] == 1200 and b["planned_steps"] == 6 and b["resized"]["after_steps"] == 2
    assert b["resized"]["steps"] == 6 and set(b["measured"]["step_s"]) >= {"baseline", "pqt", "ste", "pqt-ste"}
    assert b["measured"]["compile_s"] == max(c["s"] for c in saved["compiles"] if c["kind"] == "new")
    agg = saved["aggregate"]["arms"]["pqt"]["fp4_e2m1"]
    values = [r["eval"]["pqt"]["fp4_e2m1"] for r in saved["per_seed"]]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(values) / 2) and agg["min"] == min(values)
    v = saved["verdict"]
    assert v["best_quantized_arm"] == min(("baseline", "pqt", "ste", "pqt-ste"),
                                          key=lambda k: saved["aggregate"]["arms"][k]["fp4_e2m1"]["mean"])
    assert set(v["per_arm"]) == {"baseline", "pqt", "ste", "pqt-ste"} and "pqt_pays" in v
    assert v["recommended_minus_ste"]["quantized"]["n"] == 2
    assert os.path.getsize(out / "loss.png") > 0
    assert saved["wall_s"] < 1200 and saved["environment"]["torch"] == torch.__version__
    assert saved["environment"]["cpu_threads"] == 1 and _process_settings() == settings_before  # given back
    # The exported model (the recommended arm, or the last one asked for) loads back to its weights.
    m = train.build_model("gpt2", "tiny", 64)
    pqt_compile.export.load(saved["export"]["path"], m)
    assert os.path.getsize(saved["export"]["path"]) == saved["export"]["bytes"]
    for k in ("baseline", "pqt", "ste"):  # every arm as GGUF in the target format
        g = saved["gguf"][k]
        assert os.path.getsize(g["path"]) == g["bytes"] > 0
        if "llamacpp_val_loss" in g:
            assert g["llamacpp_val_loss"] == pytest.approx(first["eval"][k]["fp4_e2m1"], abs=0.01)


class _JumpingClock:
    """time.monotonic, jumped a day ahead once the job reports a given step (the time limit
    "runs out" there, whatever the machine's speed)."""

    def __init__(self, phase, seed, step):
        self.at, self.offset = (phase, seed, step), 0.0

    def __call__(self):
        return time.monotonic() + self.offset

    def on_step(self, phase, seed, step):
        if (phase, seed, step) == self.at:
            self.offset = 86_400.0


@pytest.mark.parametrize("stop_after,steps,seeds_used", [(3, 4, [0]), (5, 6, [0])])
def test_the_time_limit_stops_cleanly_with_partial_results(smoke, tmp_path, capsys, stop_after, steps, seeds_used):
    """Time runs out after fine-tuning step `stop_after` of seed 0: the job stops before the next
    step (mid-seed: that seed is evaluated where it stopped) or before seed 1 (not started), and
    writes the table, the plot and results.json, marked partial."""
    pre = smoke[0]
    clock = _JumpingClock("finetune", 0, stop_after)
    res = train.main(["--preset", "cpu-smoke", "--out", str(tmp_path), "--pretrain-dir", str(pre), "--no-progress",
                      "--no-export"], clock=clock, on_step=clock.on_step)
    printed = capsys.readouterr().out
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert [r["seed"] for r in saved["per_seed"]] == seeds_used
    r = saved["per_seed"][0]
    st = saved["stopped"]
    if steps < 6:
        assert st["phase"] == "fine-tuning" and (st["seed"], st["step"], st["of"]) == (0, steps, 6)
        assert not r["complete"] and r["steps"] == steps and r["steps_planned"] == 6
        assert f"seed 0 stopped after {steps} of 6 steps" in printed
    else:
        assert st["phase"] == "seeds" and st["seed"] == 1 and r["complete"]
        assert "seed 1 and later not run" in printed
    for k in ("baseline", "pqt", "ste", "pqt-ste"):
        assert len(r["train_loss"][k]) == steps
        assert [p[0] for p in r["val_curve"][k]] == sorted({0, 3, steps})  # a last point where it stopped
        assert set(r["eval"][k]) == {"clean", "fp4_e2m1", "int3", "int4:16", "nvfp4:16"}
    assert "PARTIAL: the time limit (1200 s) ran out" in printed and "validation loss" in printed
    assert saved["verdict"]["seeds"] == 1 and os.path.getsize(tmp_path / "loss.png") > 0


def test_a_time_limit_spent_before_pretraining_ends_writes_what_it_has(tmp_path, capsys):
    """No time even for the first pretraining step: nothing to compare, said so, results.json
    written (and nothing compiled or cached)."""
    res = train.main(["--preset", "cpu-smoke", "--out", str(tmp_path), "--time-limit", "1e-6", "--no-progress"])
    assert res["per_seed"] == [] and res["stopped"]["phase"] == "pretraining"
    assert "pretraining stopped at step 0 of 3" in res["stopped"]["reason"]
    assert "no results" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "results.json") and not list(tmp_path.glob("pretrain_*.pt"))


def test_arms_switch_stages_at_their_steps():
    """pqt-ste trains with STE for the last fraction; pqt-anneal steps the noise down by quarters."""
    from train_arms import ANNEAL, Arm

    cfg = pqt_compile.PQTConfig(format="fp4_e2m1")
    mk = lambda name: Arm(name, torch.nn.Linear(4, 4), cfg, steps=100, lr=1e-3, ste_fraction=0.2)  # noqa: E731
    ps = mk("pqt-ste")
    assert [(s[0], s[1].mode) for s in ps.stages] == [(0, "sample"), (80, "ste")]
    assert ps.stage(79)[1].mode == "sample" and ps.stage(80)[1].mode == "ste"
    an = mk("pqt-anneal")
    assert [s[0] for s in an.stages] == [0, 25, 50, 75]
    assert [s[1].noise_std for s in an.stages] == pytest.approx([cfg.noise_std * f for f in ANNEAL])
    assert mk("baseline").stage(50)[1] is None and mk("ste").stage(0)[1].mode == "ste"
    with pytest.raises(SystemExit, match="int4/int8 groups"):
        mk("torchao")  # fp4 has no torchao counterpart
    for noisy in (cfg.replace(noise_std=0.577), cfg.replace(noise="rounded_gaussian")):  # --noise-std, --noise
        arm = Arm("pqt-ste", torch.nn.Linear(4, 4), noisy, steps=100, lr=1e-3, ste_fraction=0.2)
        assert arm.stages[0][1] == noisy and arm.stages[1][1] == cfg.replace(mode="ste")


def test_bad_arguments_are_refused_with_the_fix(capsys):
    for argv, msg in ((["--arms", "pqt,fancy"], "unknown arm"), (["--seeds", "0,x"], "comma-separated integers"),
                      (["--ste-fraction", "1.5"], "must be in (0, 1)"),
                      # These failed with a traceback after the set-up (or after training):
                      (["--seeds", ""], "one or more comma-separated integers"), (["--batch", "0"], "--batch 0: must be"),
                      (["--eval-batches", "0"], "--eval-batches 0: must be at least 1")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert msg in capsys.readouterr().err
    a = train.parse_args(["--lower-format", "bogus"])
    with pytest.raises(SystemExit, match="--lower-format 'bogus': unknown format 'bogus'"):
        train.deploy_grids(a, train.pqt_config(a))


@pytest.mark.parametrize("d,width", [(64, 160), (128, 320), (256, 672)])
def test_llama_ffn_width_is_a_multiple_of_32(d, width):
    size = next(name for name, s in train.SIZES.items() if s[1] == d)
    assert train.build_model("llama", size, 64).config.intermediate_size == width


def test_the_verdict_compares_the_recommended_recipe_with_ste_by_seed():
    import train_report

    runs = [{"eval": {"baseline": {"clean": 2.0, "fp4_e2m1": 2.10}, "ste": {"clean": 2.05, "fp4_e2m1": 2.04},
                      "pqt-ste": {"clean": 2.02, "fp4_e2m1": q}}} for q in (2.03, 2.05, 2.02)]
    results = {"per_seed": runs}
    results["aggregate"] = train_report.aggregate(results)
    v = train_report.verdict(results, "fp4_e2m1", "pqt-ste")
    d = v["recommended_minus_ste"]
    assert d["seeds_better"] == 2 and d["quantized"]["mean"] == pytest.approx(-0.02 / 3)
    assert d["clean"]["mean"] == pytest.approx(-0.03) and v["best_quantized_arm"] == "pqt-ste"
    assert "pqt-ste minus ste, paired: fp4_e2m1 -0.0067 ± 0.0153 (better in 2/3 seeds)" in train_report.report(
        {**results, "verdict": v, "per_seed": [{**r, "step_time_ratio_median": {"ste": 1.0}, "tokens_per_s": {"ste": 1e5},
                                                 "step_ms_median": {"ste": 2.56}} for r in runs]}, "fp4_e2m1")
