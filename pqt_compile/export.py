"""The deployed model: `quantize_model` (round-to-nearest in place) and packed files.

`save` writes every sampled weight as packed codes plus int8 block exponents (`pack`), the
other tensors of the state dict as they are, the config and the format, and a sha256 of it
all. `load` checks the digest and the format, and restores weights equal to what
`quantize_model` gives, bit for bit.

Which weights: those the compiler samples. Without example inputs the module-type rules of
`reference.linear_weight_axes` decide (nn.Linear, HF Conv1D, tied embeddings); pass
`example_args` to trace the forward and apply the compiler's own rules instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

import torch

from .config import PQTConfig
from .quantize import PackedTensor, pack, quantize, unpack
from .reference import admits_fn, linear_weight_axes, parameter_aliases, trace_weight_edges

__all__ = ["quantize_model", "save", "load", "sampled_axes", "FILE_VERSION"]

FILE_VERSION = 1
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def sampled_axes(model: torch.nn.Module, config: PQTConfig, example_args: Optional[tuple] = None) -> dict[str, int]:
    """{qualified name: reduction axis} of the weights the compiler samples."""
    if example_args is not None:
        edges, _ = trace_weight_edges(model, *example_args, config=config)
        return {e.name: e.axis for e in edges}
    admits = admits_fn(config, parameter_aliases(model))
    return {n: a for n, a in linear_weight_axes(model).items() if admits(n)}


def quantize_model(model: torch.nn.Module, config: Optional[PQTConfig] = None, example_args: Optional[tuple] = None) -> torch.nn.Module:
    """Replace every sampled weight of `model` by its round-to-nearest value, in place."""
    config = config or PQTConfig()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, axis in sampled_axes(model, config, example_args).items():
            params[name].copy_(quantize(params[name], axis=axis, config=config))
    return model


def _digest(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(model: torch.nn.Module, path: str, config: Optional[PQTConfig] = None, example_args: Optional[tuple] = None) -> None:
    """Write `model` as it would be deployed in the config's format (see the module docstring)."""
    config = config or PQTConfig()
    axes = sampled_axes(model, config, example_args)
    state = model.state_dict()
    params = dict(model.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    weights: dict[str, dict] = {}
    for name, axis in axes.items():
        p: PackedTensor = pack(params[name].detach(), axis=axis, config=config)
        tensors[f"codes/{name}"], tensors[f"exponents/{name}"] = p.codes, p.exponents
        weights[name] = {"axis": p.axis, "shape": list(p.shape), "dtype": str(p.dtype)}
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
    torch.save({"meta": meta, "tensors": tensors, "sha256": _digest(meta, tensors)}, path)


def load(path: str, model: torch.nn.Module, config: Optional[PQTConfig] = None) -> torch.nn.Module:
    """Fill `model` from a file written by `save`; returns the model.

    Raises ValueError if the file is damaged or not a pqt_compile export, or if `config` is
    given and names another format or block size than the file's.
    """
    try:
        blob: Any = torch.load(path, map_location="cpu", weights_only=True)
        meta, tensors, digest = blob["meta"], blob["tensors"], blob["sha256"]
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"pqt_compile.export.load: {path} is damaged or not a pqt_compile export ({type(e).__name__}: {e})") from None
    if _digest(meta, tensors) != digest:
        raise ValueError(f"pqt_compile.export.load: {path} is damaged (its sha256 does not match its contents)")
    if meta.get("file_version") != FILE_VERSION:
        raise ValueError(f"pqt_compile.export.load: {path} has file version {meta.get('file_version')}; this pqt_compile reads {FILE_VERSION}")
    saved_cfg = PQTConfig(**meta["config"])
    if config is not None and (config.format, config.block_size) != (saved_cfg.format, saved_cfg.block_size):
        raise ValueError(
            f"pqt_compile.export.load: {path} holds format {saved_cfg.format!r} with block_size {saved_cfg.block_size!r}, "
            f"but the config asks for {config.format!r} with {config.block_size!r}; load it with its own config (or config=None)"
        )
    params = dict(model.named_parameters())
    state = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
    missing = [n for n in meta["weights"] if n not in params]
    if missing:
        raise ValueError(f"pqt_compile.export.load: the model has no parameter(s) {missing} that {path} holds")
    with torch.no_grad():
        for name, w in meta["weights"].items():
            packed = PackedTensor(tensors[f"codes/{name}"], tensors[f"exponents/{name}"], tuple(w["shape"]), w["axis"],
                                  saved_cfg.format, saved_cfg.block_size, _DTYPES[w["dtype"]])
            params[name].copy_(unpack(packed).to(params[name].device))
        result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys]
    absent = [k for k in result.missing_keys if k not in meta["weights"] and k not in meta["tied"]]
    if unexpected or absent:
        raise ValueError(f"pqt_compile.export.load: {path} does not fit this model (missing {absent}, unexpected {unexpected})")
    return model
