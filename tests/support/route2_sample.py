"""Route 2 driver, run as its own process (without TRITON_INTERPRET, which route 2 cannot have):
Inductor's Triton code for pqt.sample on a faked H100, compiled for sm_90a by triton's ptxas.

Prints one JSON line: {"skip": reason} where route 2 cannot run here, else the sample's kernels
with their registers, local memory, spill bytes and per-kernel PTX instruction counts.
Used by tests/compiler/lowering/test_triton_sm90.py; `python tests/support/route2_sample.py`
by hand.
"""

import json
import os
import sys
import tempfile

assert os.environ.get("TRITON_INTERPRET") != "1", "route 2 needs a process without TRITON_INTERPRET=1"
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

import pqt_compile.compiler.lowering  # noqa: E402,F401  (registers the lowering)
from pqt_compile import PQTConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_cuda import capture_inductor, compile_kernels, fake_h100, kernel_sources, missing_symbols, triton_bin  # noqa: E402


def sass_count(cubin: str) -> int:
    """SASS instructions in a cubin (cuobjdump -sass, NOPs left out)."""
    import re
    import subprocess

    text = subprocess.run([triton_bin("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in text.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/\s+[A-Z]", line) and " NOP" not in line)


def global_bytes(ptx: str, op: str, bits: tuple[int, ...] = (8, 16, 32)) -> int:
    """Bytes moved by one thread's `op` ("ld" or "st") instructions to global memory in the PTX
    (vector width x element width; every instruction counted once: the kernels have no loops).
    `bits`: the element widths counted: the weight's and the sample's (8 to 32 bits); the seed and
    key are the two 64-bit scalar loads of a program (bits=(64,))."""
    import re

    total = 0
    for m in re.finditer(rf"\b{op}\.global(?:\.[A-Za-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b", ptx):
        if int(m.group(2)) in bits:
            total += int(m.group(1) or 1) * int(m.group(2)) // 8
    return total


def _row(k, rblock: int = 0) -> dict:
    """One compiled config. With rblock (the reduction block), the per-element figures: elements
    per thread = XBLOCK x rblock / (32 num_warps)."""
    import re

    row = {"name": k.name, "registers": k.registers, "local_bytes": k.local_bytes, "spill_stores": k.spill_stores,
           "mul_lo_s64": k.ptx.count("mul.lo.s64"), "mul_lo_s32": k.ptx.count("mul.lo.s32"),
           "sm_90": ".target sm_90" in k.ptx, "config": k.config, "sass": sass_count(k.cubin_path),
           "ld_bytes": global_bytes(k.ptx, "ld"), "st_bytes": global_bytes(k.ptx, "st"),
           "scalar_ld_bytes": global_bytes(k.ptx, "ld", bits=(64,))}
    if rblock:
        xblock = int(re.search(r"XBLOCK: (\d+)", k.config).group(1))
        row["elements_per_thread"] = xblock * rblock / (32 * k.num_warps)
    return row


def main() -> None:
    reason = missing_symbols()
    if reason:
        print(json.dumps({"skip": reason}))
        return
    cfg = PQTConfig()
    args = (cfg.format, cfg.block_code, cfg.noise, cfg.noise_std, torch.bfloat16)
    out: dict = {"torch": torch.__version__}
    with fake_h100(), tempfile.TemporaryDirectory() as tmp:
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        with fake:
            x = torch.empty(128, 192, device="cuda", dtype=torch.bfloat16)
            w = torch.empty(256, 192, device="cuda")
            seed = torch.empty((), device="cuda", dtype=torch.int64)
            key = torch.empty((), device="cuda", dtype=torch.int64)
        code = capture_inductor(lambda w, s, k: torch.ops.pqt.sample.default(w, s, k, 1, *args), [w, seed, key])[-1]
        out["kernels"] = list(kernel_sources(code))
        # The reduction block is the block size (32): the sample is one persistent reduction over
        # [256 x 6 blocks] x [32] (lowering/sample.py NOTE [one kernel per weight]).
        out["compiled"] = [_row(k, rblock=32) for k in compile_kernels(code, tmp + "/sample")]
        # The sample in the prologue of Inductor's GEMM template (max-autotune, one template config):
        # nn.Linear's forward GEMM reads the sample transposed, which pqt.sample_t writes.
        code = capture_inductor(lambda x, w, s, k: torch.mm(x, torch.ops.pqt.sample_t.default(w, s, k, 1, *args)),
                                [x, w, seed, key], max_autotune=True)[-1]
        out["template_kernels"] = list(kernel_sources(code))
        out["template"] = [_row(k) for k in compile_kernels(code, tmp + "/template") if k.name.startswith("triton_tem")]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
