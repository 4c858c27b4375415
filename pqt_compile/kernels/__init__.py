"""Hand-written Triton kernels (a second source of the formula, held to it by bit-exact tests).

- sample: the standalone sample kernel (the op's CUDA eager path).
"""
