"""Route 2: Inductor's Triton code for pqt.sample on a faked H100, compiled for sm_90a by the
ptxas that triton bundles (tests/support/fake_cuda.py; ../shared/design/triton-offline.md).

It runs in a subprocess: route 1 (this test session) sets TRITON_INTERPRET=1, under which
triton builds no real JIT functions. Skips, with the reason, where a private symbol moved or
triton's NVIDIA backend is missing. What it holds: the sample compiles for sm_90 in every
config Inductor would autotune, without spills or local memory, with the generator in 32-bit
integer multiplies only (no mul.lo.s64: formula.py NOTE [word types]), and the whole sample of a
weight in ONE persistent-reduction kernel (lowering/sample.py NOTE [one kernel per weight]: block
amax, block values, stream words from the seed and key, the draw and the sampled value) that moves
4 + 2 bytes per element of an fp32 weight sampled to bf16 (w read once, the sample written once);
and inside the GEMM template, the sample compiles in its prologue (`pqt.sample_t`,
compiler/passes/template_layout.py).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.private_api  # exercises private torch/Triton APIs: CI reruns it on the newest torch

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "support",
                      "route2_sample.py")


@pytest.fixture(scope="module")
def route2() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    return out


def test_the_sample_compiles_for_sm90_without_spills(route2):
    assert route2["compiled"] and all(k["sm_90"] for k in route2["compiled"])
    for k in route2["compiled"]:
        assert k["local_bytes"] == 0 and k["spill_stores"] == 0, k


def test_the_generator_uses_32_bit_multiplies_only(route2):
    assert all(k["mul_lo_s64"] == 0 for k in route2["compiled"])
    assert sum(k["mul_lo_s32"] for k in route2["compiled"]) > 0  # the mixer is there, in 32 bits


def test_the_whole_sample_is_one_reduction_kernel(route2):
    assert len(route2["kernels"]) == 1 and route2["kernels"][0].startswith("triton_per_fused"), route2["kernels"]


def test_the_sample_reads_w_once_and_writes_the_sample_once(route2):
    """Per element, in every config where a thread holds whole elements: 4 bytes of the fp32 weight
    loaded and 2 bytes of the bf16 sample stored (PTX ld/st.global widths; the seed and key are two
    8-byte scalar loads per thread, not per element)."""
    rows = [k for k in route2["compiled"] if k["elements_per_thread"] >= 1]
    assert rows
    for k in rows:
        e = k["elements_per_thread"]
        assert (k["ld_bytes"] / e, k["st_bytes"] / e, k["scalar_ld_bytes"]) == (4.0, 2.0, 16), k


def test_the_sample_compiles_inside_the_gemm_templates_prologue_for_sm90(route2):
    """mm(x, pqt.sample_t(w)) under max-autotune: one template kernel computes the sample in its
    prologue (Inductor names the fused producer in the kernel's name), without spills and with a
    32-bit generator."""
    tem = [n for n in route2["template_kernels"] if n.startswith("triton_tem")]
    assert len(tem) == 1 and "sample_t" in tem[0], route2["template_kernels"]
    assert route2["template"] and all(k["sm_90"] for k in route2["template"])
    for k in route2["template"]:
        assert k["local_bytes"] == 0 and k["spill_stores"] == 0 and k["mul_lo_s64"] == 0, k
        assert k["mul_lo_s32"] > 0  # the generator is inside the template
