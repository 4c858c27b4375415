"""PQTStateCallback (pqt_compile/hf_callback.py): a Trainer run resumed from a checkpoint draws the
noise of the uninterrupted run; a checkpoint without PQT state, or with another config, is refused."""

import json
import shutil

import pytest
import torch

import pqt_compile
from pqt_compile import PQTConfig
from pqt_compile.hf_callback import PQTStateCallback

pytestmark = [pytest.mark.third_party, pytest.mark.private_api]  # transformers' Trainer, the compile path

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # Trainer needs it
CFG = PQTConfig(format="fp4_e2m1")


class _Tokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.t = torch.randint(0, 256, (48, 16), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.t[i], "labels": self.t[i].clone()}


def _trainer(out, callbacks, steps=4, **kw):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=256, n_positions=16, n_embd=32, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.config.use_cache = False
    pqt_compile.compile(model, CFG, inplace=True)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=1e-3, save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, torch_compile=False,
        dataloader_num_workers=0, seed=0, data_seed=0, **kw)
    return transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=callbacks)


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """4 steps straight, checkpointed at step 2: (the run's directory, its final weights)."""
    torch._dynamo.reset()
    out = tmp_path_factory.mktemp("hf_trainer") / "run"
    pqt_compile.manual_seed(0)
    full = _trainer(out, [PQTStateCallback(CFG)])
    full.train()
    assert pqt_compile.seed_state()["step"] == 4
    return out, _weights(full)


@pytest.mark.parametrize("restore_flag", [False, True], ids=["state_read_by_the_callback", "trainer_restores_it"])
def test_a_resumed_trainer_run_draws_the_uninterrupted_runs_noise(uninterrupted, restore_flag):
    """Without the callback the resumed steps 3-4 drew steps 1-2's noise (the stream restarted at 0).
    Trainer's own callback restore (restore_callback_states_from_checkpoint) rebuilds the callback
    from the checkpoint's JSON: the same stream either way."""
    out, want = uninterrupted
    pqt_compile.manual_seed(0)  # a new process, as far as the stream is concerned
    resumed = _trainer(out, [PQTStateCallback(CFG)], restore_callback_states_from_checkpoint=restore_flag)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert pqt_compile.seed_state()["step"] == 4
    got = _weights(resumed)
    assert all(torch.equal(got[n], want[n]) for n in want)  # bit for bit: the same noise, the same batches


@pytest.mark.parametrize("restore_flag", [False, True], ids=["state_read_by_the_callback", "trainer_restores_it"])
def test_a_resume_with_another_config_is_refused(uninterrupted, restore_flag):
    """With Trainer's callback restore, the callback was rebuilt with the checkpoint's own config and
    accepted any resume (NOTE [rebuilt by Trainer])."""
    out, _ = uninterrupted
    with pytest.raises(ValueError, match=r"resume with the config it was trained with"):
        _trainer(out, [PQTStateCallback(PQTConfig(format="int4"))], restore_callback_states_from_checkpoint=restore_flag
                 ).train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_the_newest_of_several_saved_streams_is_loaded():
    """Trainer appends one entry per save for callbacks of one class: the first was step 0's stream."""
    from pqt_compile.hf_callback import _saved_stream

    entries = [{"attributes": {"pqt_state": {"step": s}}} for s in (0, 0, 2, 2)]
    assert _saved_stream({"PQTStateCallback": entries}, "PQTStateCallback") == {"step": 2}


def test_a_resume_from_a_checkpoint_without_pqt_state_is_refused(uninterrupted, tmp_path):
    out, _ = uninterrupted
    plain = tmp_path / "checkpoint-2"  # the same checkpoint, as saved without the callback
    shutil.copytree(out / "checkpoint-2", plain)
    state = json.loads((plain / "trainer_state.json").read_text())
    del state["stateful_callbacks"]["PQTStateCallback"]
    (plain / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"resumes a Trainer checkpoint at step 2 that holds no PQT seed state"):
        _trainer(out, [PQTStateCallback(CFG)]).train(resume_from_checkpoint=str(plain))
    pqt_compile.manual_seed(0)  # allowed on request: the stream goes on where it stands
    _trainer(out, [PQTStateCallback(CFG, allow_missing_state=True)]).train(resume_from_checkpoint=str(plain))
    assert pqt_compile.seed_state()["step"] == 2
    with pytest.raises(TypeError, match=r"takes the PQTConfig the model is trained with"):
        PQTStateCallback("fp4_e2m1")  # type: ignore[arg-type]
