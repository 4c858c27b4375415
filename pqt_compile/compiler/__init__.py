"""The compile path of a training step: the backend, the graph inputs it adds, the pass, the
Inductor lowering, and the wrapper that runs each call.

- backend: the `pqt` torch.compile backend and `pqt_compile.compile`.
- graph_abi: the seed and keys inputs added to every PQT graph, in one place.
- passes/: find weight->matmul edges, insert `pqt.sample` (the joint-graph pass).
- lowering/: the Inductor lowering of `pqt.sample`.
- wrapper: `PQTCompiled`, which supplies each call's seed and keys.

Nothing here is imported by `import pqt_compile`: the backend loads it on first use.
"""
