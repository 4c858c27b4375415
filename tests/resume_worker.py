"""Run N training steps of a compiled model, optionally resuming from / saving to a checkpoint."""

import sys

import torch

import pqt_compile
from models import MLP


def main(start: int, steps: int, load: str, save: str, out: str) -> None:
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = pqt_compile.PQTConfig(format="fp4_e2m1")
    state = pqt_compile.PQTState(cfg)
    pqt_compile.manual_seed(7)
    if load != "-":
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
    if save != "-":
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pqt": state.state_dict()}, save)
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
