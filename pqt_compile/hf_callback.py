"""PQTStateCallback: the PQT seed stream in every Hugging Face Trainer checkpoint.

    from pqt_compile.hf_callback import PQTStateCallback
    Trainer(model=model, args=args, ..., callbacks=[PQTStateCallback(cfg)])

Trainer checkpoints the model, optimizer, scheduler and RNG states, not pqt_compile's seed stream
(seeds.py): without this callback, `trainer.train(resume_from_checkpoint=...)` restarts the
stream at step 0, and the resumed steps draw the noise of the run's first steps again, without
a word. The callback is a transformers `ExportableState`: Trainer writes its state, the stream's
position and the config (`PQTState(cfg).state_dict()`, plain JSON), into each checkpoint's
trainer_state.json, and at a resume the callback loads it back before the first step, so the
resumed run draws what the uninterrupted run would have drawn. It reads the saved state from the
resumed TrainerState itself, so it works whether or not `restore_callback_states_from_checkpoint`
is set. A resume from a checkpoint that holds no PQT state is refused, as `PQTState` refuses one.

Importing this module imports transformers; `import pqt_compile` does not.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import PQTConfig
from .seeds import PQTState

__all__ = ["PQTStateCallback"]


class PQTStateCallback(TrainerCallback, ExportableState):
    """Saves the PQT seed stream with each Trainer checkpoint and restores it at a resume.

    Args:
        config: the PQTConfig the model is trained with; a resume from a checkpoint saved with
            another config is refused.
        allow_missing_state: resume from a checkpoint saved without this callback by continuing
            the stream where it stands (its noise then differs from the uninterrupted run's);
            by default such a resume is refused.
        pqt_state, rebuilt: set by Trainer only (below).

    NOTE [rebuilt by Trainer]: with `restore_callback_states_from_checkpoint=True` Trainer replaces
    each ExportableState callback by `type(cb)(**state["args"])` built from the checkpoint's JSON.
    Had the args held the config, the rebuilt callback would compare the checkpoint's config with
    itself and accept any resume. So the args say only `rebuilt=True`, and a rebuilt callback takes
    the settings of the callback the user built (the last one built in this process).
    """

    def __init__(self, config: Optional[PQTConfig] = None, allow_missing_state: bool = False, *,
                 pqt_state: Optional[dict] = None, rebuilt: bool = False) -> None:
        global _user_built
        if rebuilt:
            user = _user_built() if _user_built is not None else None
            if user is None:
                raise RuntimeError("pqt: Trainer rebuilt a PQTStateCallback from a checkpoint, but no "
                                   "PQTStateCallback(cfg) was given to this Trainer; pass one in callbacks=[...]")
            config, allow_missing_state = user.config, user.allow_missing_state
        if not isinstance(config, PQTConfig):
            raise TypeError(f"pqt: PQTStateCallback takes the PQTConfig the model is trained with, got {config!r}; "
                            "e.g. PQTStateCallback(PQTConfig(format='fp4_e2m1'))")
        self.config = config
        self.allow_missing_state = bool(allow_missing_state)
        self.pqt_state = pqt_state
        if not rebuilt:
            _user_built = weakref.ref(self)

    def state(self) -> dict:
        """What Trainer writes into trainer_state.json at a checkpoint: the stream as it stands (with
        the config it was drawn with, inside `PQTState.state_dict`)."""
        return {"args": {"rebuilt": True}, "attributes": {"pqt_state": PQTState(self.config).state_dict()}}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """At a resume (global_step > 0), load the stream the resumed checkpoint holds, from the
        resumed TrainerState itself: whether or not Trainer restores callback objects."""
        if state.global_step == 0:  # a fresh run: the stream stands where the user seeded it
            return
        saved = _saved_stream(state.stateful_callbacks, type(self).__name__)
        if saved is None:
            if self.allow_missing_state:
                # Trainer's checkpoint save indexes the resumed state's entry for each ExportableState
                # callback and raises a KeyError for one the resumed checkpoint lacks (transformers 5.25).
                state.stateful_callbacks[type(self).__name__] = self.state()
                return
            raise ValueError(
                f"pqt: this run resumes a Trainer checkpoint at step {state.global_step} that holds no PQT seed state "
                "(it was saved without PQTStateCallback); resuming would restart the noise stream at step 0 and repeat "
                "the first steps' noise. Resume from a checkpoint saved with PQTStateCallback, or pass "
                "PQTStateCallback(cfg, allow_missing_state=True) to continue the stream where it stands"
            )
        PQTState(self.config).load_state_dict(saved)  # refuses another config, or no PQT state


#: the last PQTStateCallback a user built, for one Trainer rebuilds (NOTE [rebuilt by Trainer])
_user_built: Optional["weakref.ref[PQTStateCallback]"] = None


def _saved_stream(stateful_callbacks: Optional[dict], name: str) -> Optional[dict]:
    """The `pqt_state` a checkpoint's TrainerState holds for the callback class `name`, or None."""
    entry = (stateful_callbacks or {}).get(name)
    if isinstance(entry, list):  # several callbacks of one class: Trainer appends at each save, newest last
        entry = entry[-1] if entry else None
    if not isinstance(entry, dict):
        return None
    return entry.get("attributes", {}).get("pqt_state")
