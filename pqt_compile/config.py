"""PQTConfig: what to sample, in which format, with which noise.

A frozen dataclass that validates itself in `__post_init__`, so a bad value fails where it
is written, with a message that names the field, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import InitVar, dataclass, field
from typing import Any, Mapping, Optional, Union

from .blocks import block_code
from .formats import NVFP4, NVFP4_BLOCK, FormatSpec, parse_format
from .formula_noise import noise_std_problem

__all__ = ["PQTConfig", "BlockSize", "DEFAULT_NOISE_STD", "DEFAULT_BLOCK_SIZE", "default_block_size",
           "FUSED_SIBLINGS", "default_tensor_scale_groups", "config_or_default"]

BlockSize = Union[int, str]

#: block_size when none is given: OCP MX's 32, or NVFP4's 16 (the only one it defines).
DEFAULT_BLOCK_SIZE = 32


def default_block_size(format: str) -> int:
    """The block size a config of `format` gets when none is given."""
    return NVFP4_BLOCK if format == NVFP4 else DEFAULT_BLOCK_SIZE


#: The sibling nn.Linear modules that vLLM and SGLang load as one fused layer with one NVFP4 tensor
#: scale (Llama, Mistral, Qwen, ... naming): an nvfp4 config's tensor_scale_groups by default.
FUSED_SIBLINGS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def default_tensor_scale_groups(format: str) -> tuple[tuple[str, ...], ...]:
    """tensor_scale_groups when none is given: FUSED_SIBLINGS for "nvfp4", none for the formats
    without a tensor scale."""
    return FUSED_SIBLINGS if format == NVFP4 else ()


def _check_groups(value: Any, format: str) -> tuple[tuple[str, ...], ...]:
    """tensor_scale_groups, validated and made hashable (lists from JSON or options become tuples)."""
    if value is None:
        return default_tensor_scale_groups(format)
    shape = "a list of groups, each a list of two or more module names, e.g. [['q_proj', 'k_proj', 'v_proj']]"
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
        raise ValueError(f"PQTConfig.tensor_scale_groups must be {shape}, got {value!r}")
    groups, seen = [], set()
    for group in value:
        if isinstance(group, str) or not isinstance(group, (tuple, list)) or len(group) < 2:
            raise ValueError(f"PQTConfig.tensor_scale_groups must be {shape}, got the group {group!r}")
        for m in group:
            if not isinstance(m, str) or not m or "." in m or m != "".join(m.split()):
                raise ValueError(f"PQTConfig.tensor_scale_groups: {m!r} is not a module name (the last part of a "
                                 "module's qualified name, such as 'q_proj')")
            if m in seen:
                raise ValueError(f"PQTConfig.tensor_scale_groups: {m!r} is in more than one group (or twice in one)")
            seen.add(m)
        groups.append(tuple(group))
    if groups and format != NVFP4:
        raise ValueError(f"PQTConfig.tensor_scale_groups applies to format 'nvfp4' only (format {format!r} has no "
                         "tensor scale): leave it unset")
    return tuple(groups)


#: The standard deviation of uniform rounding error, in units of the step: 1/sqrt(12).
DEFAULT_NOISE_STD = 1.0 / math.sqrt(12.0)

_NOISES = ("gaussian", "uniform", "rounded_gaussian")
_MODES = ("sample", "ste")
#: noise_std when none is given: the rounding error's std for the continuous noises; for the
#: rounded Gaussian, the std before rounding (R = round(N(0, 1) / 2), as in Ahn & Yoo's later version).
_DEFAULT_STD = {"gaussian": DEFAULT_NOISE_STD, "uniform": DEFAULT_NOISE_STD, "rounded_gaussian": 0.5}


def _check_patterns(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"PQTConfig.{name} must be a regular expression or a list of them, got {value!r}")
    for p in value:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"PQTConfig.{name}: {p!r} is not a valid regular expression ({e})") from None
    return tuple(value)


@dataclass(frozen=True)
class PQTConfig:
    """Pseudo-quantization training settings.

    Attributes:
        format: target storage format (see `pqt_compile.formats`), default "fp6_e3m2";
            "nvfp4" is NVIDIA's NVFP4 (E2M1 elements, E4M3 block scales, an FP32 tensor scale).
        block_size: elements per shared-scale block along the reduction axis (default 32,
            as in OCP MX; 16 for "nvfp4", the only size it takes), or "row" (the whole
            reduction axis) or "tensor" (one block).
        mode: "sample" (default): the matmul reads w + Δ r, a fresh draw per step (PQT).
            "ste": the matmul reads round-to-nearest of w on the same grid (exactly what
            `quantize_model` deploys) and the gradient reaches w unchanged (straight-through
            fake-quant QAT), compiled and fused the same way, with no noise to draw.
        noise: "gaussian" (default), "uniform", or "rounded_gaussian" (the Gaussian rounded to
            whole steps, r = round(noise_std N(0, 1))).
        noise_std: noise standard deviation in units of the step Δ, default 1/sqrt(12); for
            "rounded_gaussian", the std before rounding (default 1/2). Not used by mode "ste".
        include: regular expressions; if non-empty, only weights whose qualified name matches
            one of them (re.search) are sampled.
        exclude: regular expressions; weights whose qualified name matches one are not sampled.
        sample_in_eval: also sample in graphs compiled for inference (no_grad, inference_mode,
            eval). Off by default: evaluation sees the clean weights.
        per_rank_noise: under torch.distributed, give each rank its own draw of every weight
            (the call's seed is mixed with the rank). Off by default: every rank draws the
            same sample, so N ranks with a global batch train exactly as one process with that
            batch. On: the averaged gradient averages N draws, a lower-variance estimate of
            the gradient of the noisy loss, but the run then depends on the world size.
        share_sample: keep each step's sampled weights from the forward for the backward
            (the sample node is tagged MUST_SAVE) instead of regenerating them there (the
            default, MUST_RECOMPUTE). Saves the backward's recompute, one sample pass over
            every weight per step; costs one extra copy of every sampled weight (in the sample's
            dtype) held from the forward to the backward. The samples are the same bits either way.
        tensor_scale_groups: format "nvfp4" only. Groups of sibling module names whose weights
            share one tensor scale, the one the group's max |w| gives: the weights
            `<parent>.<m>.weight` of the members m of a group under one parent (pqt_compile.scale_groups).
            Default (None): FUSED_SIBLINGS, (q_proj, k_proj, v_proj) and (gate_proj, up_proj), which
            vLLM and SGLang load as one fused layer with one tensor scale; () for other formats.
            Set () to give every weight its own tensor scale (transformers and llama.cpp read each
            weight's own scale; a vLLM export then refuses siblings whose scales differ).
    """

    format: str = "fp6_e3m2"
    block_size: Optional[BlockSize] = None  # None: the format's default (default_block_size)
    mode: str = "sample"
    noise: str = "gaussian"
    noise_std: Optional[float] = None  # None: the noise's default (_DEFAULT_STD)
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    sample_in_eval: bool = False
    per_rank_noise: bool = False
    share_sample: bool = False
    tensor_scale_groups: Optional[tuple[tuple[str, ...], ...]] = None  # None: the format's (default_tensor_scale_groups)
    # Removed in 0.2: the run's seed has one home, pqt_compile.manual_seed (an InitVar, so that
    # an old call is refused with the fix instead of a bare "unexpected keyword").
    seed: InitVar[Optional[int]] = None

    def __post_init__(self, seed: Optional[int]) -> None:
        if seed is not None:
            raise ValueError(
                "PQTConfig.seed was removed: the run's seed is set once, with pqt_compile.manual_seed(seed) "
                "before training (a seed in the config would also split Inductor's cache by seed)"
            )
        parse_format(self.format)  # raises ValueError naming the accepted formats
        b = default_block_size(self.format) if self.block_size is None else self.block_size
        if isinstance(b, bool) or not (isinstance(b, int) and 0 < b < 2**63 or b in ("row", "tensor")):
            raise ValueError(  # < 2**63: the op's schema carries it as an int64
                f"PQTConfig.block_size must be a positive int (below 2**63), 'row' or 'tensor', got {b!r}"
            )
        if self.format == NVFP4 and b != NVFP4_BLOCK:
            raise ValueError(
                f"PQTConfig(format='nvfp4') takes block_size {NVFP4_BLOCK} only (NVFP4 scales every 16 elements "
                f"with one E4M3 number), got {b!r}: leave block_size unset, or train fp4_e2m1 with block_size "
                f"{b!r} (power-of-two scales, MXFP4 for 32)"
            )
        object.__setattr__(self, "block_size", b)
        if self.noise not in _NOISES:
            raise ValueError(f"PQTConfig.noise must be one of {_NOISES}, got {self.noise!r}")
        if self.mode not in _MODES:
            raise ValueError(
                f"PQTConfig.mode must be one of {_MODES}, got {self.mode!r} ('sample': PQT noise; "
                "'ste': round to nearest with a straight-through gradient)"
            )
        if self.mode == "ste" and (self.noise != "gaussian" or self.noise_std is not None):
            raise ValueError(
                "PQTConfig(mode='ste') rounds to nearest and draws no noise: leave noise and noise_std "
                f"unset (got noise={self.noise!r}, noise_std={self.noise_std!r})"
            )
        if self.mode == "ste":
            s = None  # nothing to resolve: no noise is drawn
        else:
            s = _DEFAULT_STD[self.noise] if self.noise_std is None else self.noise_std
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0):
            raise ValueError(f"PQTConfig.noise_std must be a finite number > 0 (units of the step), got {s!r}")
        problem = None if s is None else noise_std_problem(self.noise, float(s))
        if problem is not None:
            raise ValueError(f"PQTConfig.noise_std: {problem}")
        # Resolved here so that the op, explain and the cache key see the number itself.
        object.__setattr__(self, "noise_std", None if s is None else float(s))
        object.__setattr__(self, "include", _check_patterns("include", self.include))
        object.__setattr__(self, "exclude", _check_patterns("exclude", self.exclude))
        if not isinstance(self.sample_in_eval, bool):
            raise ValueError(f"PQTConfig.sample_in_eval must be a bool, got {self.sample_in_eval!r}")
        if not isinstance(self.per_rank_noise, bool):
            raise ValueError(f"PQTConfig.per_rank_noise must be a bool, got {self.per_rank_noise!r}")
        if not isinstance(self.share_sample, bool):
            raise ValueError(f"PQTConfig.share_sample must be a bool, got {self.share_sample!r}")
        object.__setattr__(self, "tensor_scale_groups", _check_groups(self.tensor_scale_groups, self.format))

    @property
    def spec(self) -> FormatSpec:
        """The parsed format."""
        return parse_format(self.format)

    @property
    def op_noise(self) -> str:
        """The perturbation as the op's schema carries it: the noise, or "rtn" for mode "ste"."""
        return "rtn" if self.mode == "ste" else self.noise

    @property
    def op_noise_std(self) -> float:
        """noise_std as the op's schema carries it (0.0 for mode "ste", which draws none)."""
        return 0.0 if self.noise_std is None else self.noise_std

    @property
    def block_code(self) -> int:
        """block_size as the op's schema carries it: B > 0, 0 for "row", -1 for "tensor"."""
        return block_code(self.block_size)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> "PQTConfig":
        """Build a config from a `torch.compile(options=...)` dict; unknown keys are refused."""
        options = dict(options or {})
        known = {f.name for f in dataclasses.fields(cls)} | {"seed"}  # seed: refused with its fix
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown pqt option(s) {unknown}; accepted: {sorted(known)}"
            )
        return cls(**options)

    def to_options(self) -> dict[str, Any]:
        """This config as `torch.compile(backend="pqt", options=...)` takes it (from_options' inverse)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> "PQTConfig":
        """A copy with some fields changed (validated again). A noise_std that was the old noise's
        default follows a change of noise or mode, and a block_size or tensor_scale_groups that was
        the old format's default a change of format (none is carried over as if chosen). `mode="ste"` draws no
        noise, so switching to it drops the noise and noise_std of a PQT config unless they are
        given (`cfg.replace(mode="ste")` is the PQT-then-STE recipe's second phase)."""
        if changes.get("mode") == "ste" and self.mode != "ste":
            changes.setdefault("noise", _FIELD_DEFAULTS["noise"])
            changes.setdefault("noise_std", _FIELD_DEFAULTS["noise_std"])
        if "format" in changes and "block_size" not in changes and self.block_size == default_block_size(self.format):
            changes["block_size"] = None
        if ("format" in changes and "tensor_scale_groups" not in changes
                and self.tensor_scale_groups == default_tensor_scale_groups(self.format)):
            changes["tensor_scale_groups"] = None
        if ("noise" in changes or "mode" in changes) and "noise_std" not in changes:
            if self.noise_std is None or self.noise_std == _DEFAULT_STD[self.noise]:
                changes["noise_std"] = None
        return dataclasses.replace(self, **changes)



def config_or_default(config: Any, where: str, default: Optional[PQTConfig] = None) -> PQTConfig:
    """`config`, or `default` (PQTConfig()) for None; anything else is refused by name, with the
    fix for the usual slip of passing a format name where the config goes."""
    if config is None:
        return default if default is not None else PQTConfig()
    if isinstance(config, PQTConfig):
        return config
    hint = f"; for a format write config=PQTConfig(format={config!r})" if isinstance(config, str) else ""
    raise TypeError(f"{where}: config must be a PQTConfig, got {type(config).__name__}{hint}")


#: The fields' declared defaults (what `replace` resets a field to).
_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PQTConfig)}
