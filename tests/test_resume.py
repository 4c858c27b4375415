"""Exact resume: 10 steps straight equal 5 steps, a checkpoint, a new process, 5 more."""

import os
import subprocess
import sys

import pytest
import torch

import pqt_compile

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(*args: str) -> None:
    subprocess.run([sys.executable, os.path.join(HERE, "resume_worker.py"), *args], check=True, cwd=HERE,
                   env={**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")})


def test_resume_in_a_new_process_is_exact(tmp_path):
    """10 steps straight = 5 steps, a checkpoint (torch.save, and torch.distributed.checkpoint),
    a new process, 5 more."""
    straight, first = str(tmp_path / "straight.pt"), str(tmp_path / "first.pt")
    _run("0", "10", "-", "-", straight)
    a = torch.load(straight, weights_only=True)
    cks = (str(tmp_path / "ck.pt"), str(tmp_path / "ck.dcp"))
    _run("0", "5", "-", ",".join(cks), first)
    half = torch.load(first, weights_only=True)
    assert not all(torch.equal(a[k], half[k]) for k in a)  # (the last 5 steps do change the weights)
    for ck in cks:
        resumed = ck + ".resumed.pt"
        _run("5", "5", ck, "-", resumed)
        b = torch.load(resumed, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), ck  # bit for bit


def test_dcp_checkpoint_without_or_with_other_pqt_state_is_refused(tmp_path):
    import torch.distributed.checkpoint as dcp

    from models import MLP

    cfg = pqt_compile.PQTConfig(format="fp4_e2m1")
    model = MLP()
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path / "no_pqt"))
    # DCP refuses, naming the missing key (its CheckpointException is a BaseException, torch 2.13).
    with pytest.raises(BaseException) as refused:
        dcp.load({"model": model.state_dict(), "pqt": pqt_compile.PQTState(cfg)}, checkpoint_id=str(tmp_path / "no_pqt"))
    assert "Missing key in checkpoint state_dict: pqt." in str(refused.value)
    dcp.save({"pqt": pqt_compile.PQTState(cfg)}, checkpoint_id=str(tmp_path / "fp4"))
    with pytest.raises(ValueError, match="saved with"):
        dcp.load({"pqt": pqt_compile.PQTState(cfg.replace(format="int8"))}, checkpoint_id=str(tmp_path / "fp4"))


def test_state_refuses_another_config_and_missing_state():
    from pqt_compile import seeds

    state = pqt_compile.PQTState(pqt_compile.PQTConfig(format="fp4_e2m1"))
    saved = state.state_dict()
    with pytest.raises(ValueError, match="saved with"):
        pqt_compile.PQTState(pqt_compile.PQTConfig(format="int8")).load_state_dict(saved)
    with pytest.raises(ValueError, match="no PQT seed state"):
        state.load_state_dict({})
    pqt_compile.manual_seed(3)
    seeds.advance_step()
    s1 = pqt_compile.current_seed()
    saved = state.state_dict()
    seeds.advance_micro_batch()
    s2 = pqt_compile.current_seed()
    state.load_state_dict(saved)
    assert pqt_compile.current_seed() == s1 != s2 and s1 == pqt_compile.step_seed(1, 0, base=3)


def test_state_from_before_a_new_config_field_still_loads():
    """A config repr without a field added later (here per_rank_noise) is that field's default."""
    old = {"base": 1, "step": 4, "micro_batch": 2, "config": "PQTConfig(format='fp4_e2m1', block_size=32, noise='gaussian', "
           "noise_std=0.2886751345948129, include=(), exclude=(), sample_in_eval=False)"}
    pqt_compile.PQTState(pqt_compile.PQTConfig(format="fp4_e2m1")).load_state_dict(old)
    assert pqt_compile.seed_state() == {"base": 1, "step": 4, "micro_batch": 2}
    for other in (pqt_compile.PQTConfig(format="fp4_e2m1", per_rank_noise=True), pqt_compile.PQTConfig(format="int4")):
        with pytest.raises(ValueError, match="saved with"):
            pqt_compile.PQTState(other).load_state_dict(old)
    with pytest.raises(ValueError, match="saved with"):
        pqt_compile.PQTState(pqt_compile.PQTConfig()).load_state_dict({**old, "config": "not a config"})


def test_state_of_pqt_compile_0_1_is_refused_with_the_fix():
    """0.1 advanced its stream per compiled call; that stream cannot be continued exactly."""
    old = {"base": 1, "counter": 4, "config": "PQTConfig(format='fp4_e2m1', block_size=32, noise='gaussian', "
           "noise_std=0.2886751345948129, seed=0, include=(), exclude=(), sample_in_eval=False)"}
    before = pqt_compile.seed_state()
    with pytest.raises(ValueError, match="0.1.*manual_seed"):
        pqt_compile.PQTState(pqt_compile.PQTConfig(format="fp4_e2m1")).load_state_dict(old)
    assert pqt_compile.seed_state() == before
