"""Run N training steps of a compiled model, optionally resuming from / saving to a checkpoint.

A checkpoint path ending in ".dcp" is written with torch.distributed.checkpoint (a directory,
the model and optimizer through `get_state_dict`, PQTState as a Stateful), any other with
torch.save of the three state dicts.
"""

import sys

import torch

import pqt_compile
from models import MLP


class _App:
    """Model and optimizer as one Stateful, as torch.distributed.checkpoint's recipe has it."""

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        self.model, self.opt = model, opt

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, opt_sd = get_state_dict(self.model, self.opt)
        return {"model": model_sd, "opt": opt_sd}

    def load_state_dict(self, sd: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.opt, model_state_dict=sd["model"], optim_state_dict=sd["opt"])


def main(start: int, steps: int, load: str, save: str, out: str) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = pqt_compile.PQTConfig(format="fp4_e2m1")
    state = pqt_compile.PQTState(cfg)
    pqt_compile.manual_seed(7)
    if load.endswith(".dcp"):
        import torch.distributed.checkpoint as dcp

        dcp.load({"app": _App(model, opt), "pqt": state}, checkpoint_id=load)
    elif load != "-":
        ck = torch.load(load, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state.load_state_dict(ck["pqt"])
    cm = pqt_compile.compile(model, cfg)
    for step in range(start, start + steps):
        x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1000 + step))  # batch of global step
        cm(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    for path in save.split(",") if save != "-" else ():  # several: the same state, in each form
        if path.endswith(".dcp"):
            import torch.distributed.checkpoint as dcp

            dcp.save({"app": _App(model, opt), "pqt": state}, checkpoint_id=path)
        else:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pqt": state.state_dict()}, path)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
