"""Shared test helpers."""

from __future__ import annotations

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fmt_dict(spec) -> dict:
    """The constants of a FormatSpec as the independent re-implementation takes them."""
    return {"is_int": spec.is_int, "emax": spec.emax, "emin": spec.emin, "M": spec.mantissa_bits}
