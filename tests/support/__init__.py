"""Test support that reaches into torch and Triton internals, version-checked (besides
pqt_compile/compat/, the one place allowed to): route 1 (triton_cpu: Inductor's Triton code
for CPU tensors, run by the Triton interpreter) and route 2 (fake_cuda, route2_sample: sm_90
code generated with a faked device and compiled offline); symbols: the shared lookup."""
