"""Hand-written Triton kernels (a second source of the formula, held to it by bit-exact tests).

- formula_tl: formula.py's device functions, shared by the kernels.
- sample: the standalone sample kernel (the op's CUDA eager path).
- linear: a GEMM with the sample in its prologue, and `pqt_compile.linear`.
"""
