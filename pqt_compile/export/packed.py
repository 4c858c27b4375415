"""The deployed model: `quantize_model` (round-to-nearest in place) and packed files.

`save` writes every sampled weight as packed codes plus int8 block exponents (`pack`; NVFP4: E4M3
block scales and the tensor exponent), the other tensors of the state dict as they are, the config and the format, and a sha256 of it
all. `load` checks the digest and the format, and restores weights equal to what
`quantize_model` gives, bit for bit; `read_packed` returns the stored packings themselves (for the
writers: quantize.py NOTE [re-quantizing NVFP4]).

Which weights: those the compiler samples (`reference.sampled_axes`). Without example inputs
the module-type rules of `selection.module_rule_axes` decide (nn.Linear, HF Conv1D, tied
embeddings), with a warning naming the matrix weights they cannot place (a bare Parameter used
as x @ W); pass `example_args` to trace the forward and apply the compiler's own rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

import torch

from ..config import PQTConfig, config_or_default
from ..naming import canonical_name, named_parameters, unwrap
from ..quantize import PackedTensor, pack, quantize, unpack
from ..reference import sampled_axes
from ..scale_groups import group_tensor_amax, groups_among
from .common import atomic_output, check_destination
from .deployed import known_packing, remember

__all__ = ["quantize_model", "save", "load", "read_packed", "saved_config", "FILE_VERSION"]

FILE_VERSION = 1
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def quantize_model(model: torch.nn.Module, config: Optional[PQTConfig] = None, example_args: Optional[tuple] = None) -> torch.nn.Module:
    """Replace every sampled weight of `model` by its round-to-nearest value, in place. The
    writers then store exactly these values (deployed.py NOTE [deployed packings])."""
    config = config_or_default(config, "pqt_compile.quantize_model")
    params = named_parameters(model)
    axes = sampled_axes(model, config, example_args)
    # Before any weight changes; a NaN member does not keep its finite siblings from being quantized.
    shared = group_tensor_amax({n: params[n] for n in axes}, config, nonfinite="skip")
    groups = groups_among(axes, config)
    grouped = {n for g in groups for n in g}
    # One tensor-scale group (or lone weight) at a time: its NVFP4 packings are held only until
    # `remember` has kept the few a writer needs (NOTE [deployed packings]).
    for unit in [*groups, *((n,) for n in axes if n not in grouped)]:
        packings: dict[str, PackedTensor] = {}
        with torch.no_grad():
            for name in unit:
                amax = shared.get(name)
                if config.spec.two_level:  # NVFP4: its packing, whose values are quantize's
                    try:
                        packings[name] = pack(params[name].detach(), axis=axes[name], config=config, name=name,
                                              tensor_amax=amax)
                    except ValueError:  # NaN, or no tensor scale: quantize leaves such a weight as it is
                        pass
                value = (unpack(packings[name]) if name in packings
                         else quantize(params[name], axis=axes[name], config=config, tensor_amax=amax))
                params[name].copy_(value.to(params[name].device))
        remember({n: params[n] for n in unit}, packings, config)
    return model


def _digest(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-d too
    return h.hexdigest()


def save(model: torch.nn.Module, path: str, config: Optional[PQTConfig] = None, example_args: Optional[tuple] = None,
         *, force: bool = False) -> None:
    """Write `model` as it would be deployed in the config's format (see the module docstring).

    An existing `path` is refused unless `force` (it may be a training checkpoint); the file is
    written under a temporary name and renamed into place, so a failure leaves `path` as it was.
    A DDP or DataParallel wrapper is looked through: the file holds the model's own names, which
    `load` matches whether or not the model it fills is wrapped."""
    config = config_or_default(config, "pqt_compile.export.save")
    check_destination(path, force=force, directory=False)  # before any work
    model = unwrap(model)
    axes = sampled_axes(model, config, example_args)
    state = {canonical_name(k): v for k, v in model.state_dict().items()}  # names as the keys' (naming.py)
    params = named_parameters(model)
    shared = group_tensor_amax({n: params[n] for n in axes}, config, nonfinite="refuse")  # NVFP4's tensor-scale groups
    tensors: dict[str, torch.Tensor] = {}
    weights: dict[str, dict] = {}
    for name, axis in axes.items():
        p: PackedTensor = pack(params[name].detach(), axis=axis, config=config, name=name, tensor_amax=shared.get(name),
                               known=known_packing({}, name, params[name]))
        weights[name] = {"axis": p.axis, "shape": list(p.shape), "dtype": str(p.dtype)}
        tensors[f"codes/{name}"] = p.codes
        if p.scales is not None:  # NVFP4: E4M3 block scales (as their bytes) and the tensor exponent
            tensors[f"scales/{name}"] = p.scales.view(torch.uint8)
            weights[name]["tensor_exponent"] = p.tensor_exponent
        else:
            tensors[f"exponents/{name}"] = p.exponents
    # state_dict() returns detached tensors: a sampled weight (or a key tied to one) is
    # recognised by its storage, and stored only in packed form.
    packed_ptrs = {params[n].data_ptr(): n for n in axes}
    tied = {key: packed_ptrs[t.data_ptr()] for key, t in state.items() if t.data_ptr() in packed_ptrs and key not in axes}
    for key, t in state.items():
        if key not in axes and key not in tied:
            tensors[f"state/{key}"] = t
    meta = {
        "file_version": FILE_VERSION,
        "format": config.format,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "weights": weights,
        "tied": tied,
    }
    blob = {"meta": meta, "tensors": tensors, "sha256": _digest(meta, tensors)}
    with atomic_output(path, directory=False, force=force) as tmp:
        torch.save(blob, tmp)


def _read(path: str) -> tuple[dict, dict[str, torch.Tensor], PQTConfig]:
    """(meta, tensors, config) of a file written by `save`, checked (sha256, file version)."""
    try:
        blob: Any = torch.load(path, map_location="cpu", weights_only=True)
        meta, tensors, digest = blob["meta"], blob["tensors"], blob["sha256"]
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"pqt_compile.export.load: {path} is damaged or not a pqt_compile export ({type(e).__name__}: {first})") from None
    if _digest(meta, tensors) != digest:
        raise ValueError(f"pqt_compile.export.load: {path} is damaged (its sha256 does not match its contents)")
    if meta.get("file_version") != FILE_VERSION:
        raise ValueError(f"pqt_compile.export.load: {path} has file version {meta.get('file_version')}; this pqt_compile reads {FILE_VERSION}")
    # seed: pqt_compile 0.1. A file without tensor_scale_groups was packed before groups existed, a
    # tensor scale per weight (not the format's default groups of today).
    saved_cfg = PQTConfig(**{"tensor_scale_groups": (), **{k: v for k, v in meta["config"].items() if k != "seed"}})
    return meta, tensors, saved_cfg


def saved_config(path: str) -> PQTConfig:
    """The PQTConfig a file written by `save` was saved with (ValueError if it is damaged)."""
    return _read(path)[2]


def load(path: str, model: torch.nn.Module, config: Optional[PQTConfig] = None) -> torch.nn.Module:
    """Fill `model` from a file written by `save`; returns the model.

    Raises ValueError, before changing the model, if the file is damaged or not a pqt_compile
    export, if `config` is given and names another format or block size than the file's, or if
    the model does not fit the file (a weight or tensor missing on either side, another shape). A
    key the saved model tied to a sampled weight (a tied head) gets that weight's deployed
    values whether or not `model` ties it.
    """
    meta, tensors, saved_cfg = _read(path)
    weights = _packed_weights(meta, tensors, saved_cfg)
    given, model = model, unwrap(model)  # the file holds the model's own names (a DDP wrapper adds `module.`)
    if config is not None and (config.format, config.block_size) != (saved_cfg.format, saved_cfg.block_size):
        raise ValueError(
            f"pqt_compile.export.load: {path} holds format {saved_cfg.format!r} with block_size {saved_cfg.block_size!r}, "
            f"but the config asks for {config.format!r} with {config.block_size!r}; load it with its own config (or config=None)"
        )
    params = named_parameters(model)
    raw_state = model.state_dict(keep_vars=True)
    model_state = {canonical_name(k): v for k, v in raw_state.items()}
    own = {canonical_name(k): k for k in raw_state}  # a compiled wrapper's keys hold `_orig_mod`
    state = {own.get(k[len("state/"):], k[len("state/"):]): v for k, v in tensors.items() if k.startswith("state/")}
    _check_fits(path, meta, tensors, params, model_state)
    with torch.no_grad():
        for name, packed in weights.items():
            params[name].copy_(unpack(packed).to(params[name].device))
        for key, source in meta["tied"].items():
            target = model_state[key]
            if target is not params[source]:  # tied when saved, not in this model: the same values
                target.copy_(params[source].to(target.device, target.dtype))
        result = model.load_state_dict(state, strict=False)
    remember(params, weights, saved_cfg)  # NOTE [deployed packings]
    unexpected = list(result.unexpected_keys)
    absent = [k for k in result.missing_keys if canonical_name(k) not in meta["weights"] and canonical_name(k) not in meta["tied"]]
    if unexpected or absent:  # _check_fits refuses these first; kept for a state dict hook that renames keys
        raise ValueError(f"pqt_compile.export.load: {path} does not fit this model (missing {absent}, unexpected {unexpected})")
    return given


def read_packed(path: str) -> dict[str, PackedTensor]:
    """{name: PackedTensor} of the sampled weights in a file written by `save` (checked as `load`
    checks it): what a writer takes as `packed=` for a model loaded from this file."""
    meta, tensors, saved_cfg = _read(path)
    return _packed_weights(meta, tensors, saved_cfg)


def _packed_weights(meta: dict, tensors: dict[str, torch.Tensor], saved_cfg: PQTConfig) -> dict[str, PackedTensor]:
    out = {}
    for name, w in meta["weights"].items():
        scales = tensors.get(f"scales/{name}")
        out[name] = PackedTensor(tensors[f"codes/{name}"], tensors.get(f"exponents/{name}"), tuple(w["shape"]), w["axis"],
                                 saved_cfg.format, saved_cfg.block_size, _DTYPES[w["dtype"]],
                                 scales=None if scales is None else scales.view(torch.float8_e4m3fn),
                                 tensor_exponent=w.get("tensor_exponent"))
    return out


def _check_fits(path: str, meta: dict, tensors: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter],
                model_state: dict[str, torch.Tensor]) -> None:
    """Refuse a model that does not fit the file, before anything is copied into it: every key on
    both sides, every shape equal (`copy_` would broadcast a [1, K] weight into [N, K])."""
    missing = [n for n in meta["weights"] if n not in params]
    if missing:  # a buffer of that name would pass the key check: a packed weight goes into a Parameter
        raise ValueError(f"pqt_compile.export.load: the model has no parameter(s) {missing} that {path} holds")
    saved = {n: tuple(w["shape"]) for n, w in meta["weights"].items()}
    saved.update({k[len("state/"):]: tuple(t.shape) for k, t in tensors.items() if k.startswith("state/")})
    saved.update({k: saved[source] for k, source in meta["tied"].items()})
    absent = [k for k in saved if k not in model_state]
    unexpected = [k for k in model_state if k not in saved]
    if absent or unexpected:
        raise ValueError(f"pqt_compile.export.load: {path} does not fit this model (the model lacks {absent}, "
                         f"the file lacks {unexpected})")
    wrong = [f"{k}: file {list(s)}, model {list(model_state[k].shape)}" for k, s in saved.items() if tuple(model_state[k].shape) != s]
    if wrong:
        raise ValueError(f"pqt_compile.export.load: {path} holds other shapes than this model ({'; '.join(wrong)}): "
                         f"build the model with the configuration it was saved from")
