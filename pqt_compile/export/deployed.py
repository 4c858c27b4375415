"""The packings of deployed weights that their values alone cannot give back, kept for the writers.

NOTE [deployed packings]: a writer packs a weight (`pack`); for a weight that already holds
deployed values (after `quantize_model`, or `load` of a packed file), packing them again must give
the same values. Every format but NVFP4 is idempotent there, but an NVFP4 block under a subnormal
E4M3 scale, or a group whose amax rounds onto a binade's edge, can pack to other values
(quantize.py NOTE [re-quantizing NVFP4]): the served model would differ, silently, from the one
the user evaluated. So `quantize_model` and `load` keep the packing of each such weight, weakly
keyed by its Parameter object (`remember`), and the writers take it as `known` when no `packed=`
is given (`known_packing`); `is_packing_of` still checks that the weight holds exactly its values,
so a weight changed since (trained further) is packed afresh. Only the weights that need it are
kept (about one byte per element each, while the model lives); a copy of the model is another
set of Parameters, without them: pass `packed=read_packed(path)` there.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..config import PQTConfig
from ..quantize import PackedTensor, quantize, same_bits
from ..scale_groups import group_tensor_amax

__all__ = ["remember", "known_packing"]

_PACKINGS = WeakIdKeyDictionary()  # Parameter -> PackedTensor


def remember(params: Mapping[str, torch.Tensor], packings: Mapping[str, PackedTensor], config: PQTConfig) -> None:
    """After `params[name]` took the values of `packings[name]`: keep each packing that a writer's
    own packing of those values would not reproduce, and forget any older one (NOTE [deployed
    packings]). `config`: the one the packings were made with."""
    if not config.spec.two_level:
        return  # idempotent formats: packing the deployed values gives them back
    shared = group_tensor_amax({n: params[n] for n in packings}, config)  # the writer's amax, from deployed values
    for name, p in packings.items():
        w = params[name].detach()
        try:
            again = quantize(w, axis=p.axis, config=config, tensor_amax=shared.get(name))
        except ValueError:
            again = None  # the writer refuses it (a group amax the weight exceeds cannot happen here)
        if again is None or not same_bits(again, w):
            _PACKINGS[params[name]] = p
        else:
            _PACKINGS.pop(params[name], None)


def known_packing(packed: Mapping[str, PackedTensor], name: str, param: torch.Tensor) -> Optional[PackedTensor]:
    """The packing a writer takes as `known` for weight `name`: the caller's (`packed=`), else one
    remembered for this Parameter (NOTE [deployed packings])."""
    given = packed.get(name)
    return given if given is not None else _PACKINGS.get(param)
