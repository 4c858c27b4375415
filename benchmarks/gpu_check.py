"""The GPU check: every GPU measurement of the project in one command, one report.

    bash scripts/gpu-check.sh                 # on a CUDA machine: <= 8 minutes on one GPU
    bash scripts/gpu-check.sh --smoke         # on the CPU: the same code paths, tiny shapes (CI runs it)

Parts, each in its own process under a time limit taken from one budget (default 450 s), in
this order, so that a part that fails or runs out of time is reported and the next still runs:
1. the GPU test tier: `pytest -m gpu` (the sample against the CPU op, the compile path against
   the reference, the GEMM prologue, launches per step, no host-device synchronisation, CUDA
   graphs);
2. `gpu_train_step.py --model gpt2-124m --profile`: step time, tokens/s, peak memory and first
   step (compile) of plain Inductor, pqt, pqt with share_sample and torchao's fake-quant QAT side
   by side, and each arm's profile (kernels per step, device-busy time against step time, top
   kernels, the pqt kernels' share);
3. `gpu_train_step.py --kernels`: the sample's bandwidth against a device copy, and the GEMM with
   the sample in its prologue against the separate kernel for M from 16 to 8192;
4. the 1.1B Llama (`--model llama-1b`), if at least 150 s of the budget are left.
It writes report.md (the parts' outputs, the versions, the commands) and report.json into --out
(default: $OUT if set, else runs/gpu-check). It runs from the source tree on the machine's own
torch (2.11 was seen on the GPU machine) and installs nothing. Exit status: 0 if every part that
ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _versions() -> dict:
    out = {"python": platform.python_version(), "machine": platform.machine()}
    code = ("import json, torch\nv = {'torch': torch.__version__, 'cuda': torch.cuda.is_available()}\n"
            "v['gpu'] = torch.cuda.get_device_name(0) if v['cuda'] else None\n"
            "for m in ('triton', 'transformers', 'torchao'):\n"
            "    try:\n        v[m] = __import__(m).__version__\n    except Exception as e:\n        v[m] = None\n"
            "print(json.dumps(v))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode == 0:
        out.update(json.loads(r.stdout.strip().splitlines()[-1]))
    try:
        out["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or "unknown (no git checkout)"
    except OSError:
        out["commit"] = "unknown (no git)"
    return out


def gpu_tier_files() -> list[str]:
    """The test modules that hold GPU-tier tests (`pytest.mark.gpu`): only those are collected, so
    that a module importing a package the GPU machine lacks (gguf, compressed-tensors) cannot stop
    the tier."""
    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "tests")):
        for name in sorted(files):
            if name.startswith("test_") and name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    if "pytest.mark.gpu" in f.read():
                        found.append(path)
    return sorted(found)


def _parts(smoke: bool, out: str) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in s) of each part, in order."""
    py = sys.executable
    tier = [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_tier_files()]
    step = [py, os.path.join(BENCH, "gpu_train_step.py")]
    if smoke:
        tiny = ["--device", "cpu", "--layers", "1", "--d-model", "64", "--seq", "16", "--batch", "2", "--rounds", "1",
                "--warmup", "0", "--no-torchao", "--profile", "--kernels", "--m-sweep", "16"]
        return [
            ("GPU test tier (pytest -m gpu)", tier, 300),
            ("training step + kernels (smoke: CPU, tiny)", [*step, *tiny, "--json", os.path.join(out, "step.json")], 900),
        ]
    return [
        ("GPU test tier (pytest -m gpu)", tier, 170),
        ("GPT-2 124M training step", [*step, "--model", "gpt2-124m", "--arms", "inductor,pqt,pqt-shared,torchao",
                                      "--profile", "--rounds", "10", "--warmup", "3",
                                      "--json", os.path.join(out, "step.json")], 240),
        ("kernels: sample bandwidth, prologue sweep", [*step, "--no-train", "--kernels", "--m-sweep", "16,128,1024,8192",
                                                       "--rounds", "20", "--json", os.path.join(out, "kernels.json")], 60),
        ("1.1B Llama training step", [*step, "--model", "llama-1b", "--batch", "4", "--seq", "2048",
                                      "--arms", "inductor,pqt", "--rounds", "5", "--warmup", "2",
                                      "--json", os.path.join(out, "llama.json")], 150),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the code paths, not the numbers (CI)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "runs", "gpu-check"))
    p.add_argument("--budget-s", type=float, default=450.0, help="the whole check's time budget (s)")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    start = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)  # real Triton on a GPU; the CPU smoke parts set what they need
    versions = _versions()
    if not a.smoke and not versions.get("cuda"):
        print("gpu-check: no CUDA device here; run it on a GPU machine, or --smoke for the CPU code paths", file=sys.stderr)
        return 2
    report = {"versions": versions, "smoke": a.smoke, "budget_s": a.budget_s, "parts": []}
    lines = [f"# GPU check{' (smoke: CPU, tiny shapes; the numbers mean nothing)' if a.smoke else ''}", "",
             "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    ok = True
    for name, cmd, limit in _parts(a.smoke, a.out):
        left = a.budget_s - (time.monotonic() - start)
        if "Llama" in name and left < 150:
            report["parts"].append({"name": name, "skipped": f"{left:.0f} s of the budget left (needs 150)"})
            lines += [f"## {name}", "", f"skipped: {left:.0f} s of the budget left (needs 150)", ""]
            continue
        timeout = max(10.0, min(limit, left))
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
            status, output = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            status = "timeout"
            output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        took = time.monotonic() - t0
        passed = status == 0 or (status == 5 and "pytest" in cmd)  # 5: no test collected (CPU: all skipped)
        ok &= passed
        shown = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)
        report["parts"].append({"name": name, "command": shown, "status": status, "seconds": took, "passed": passed})
        lines += [f"## {name}", "", f"command: `{shown}`", f"status: {status}, {took:.0f} s", "", "```",
                  _tail(output, 12000), "```", ""]
        print(f"[gpu-check] {name}: status {status}, {took:.0f} s", flush=True)
    report["seconds"] = time.monotonic() - start
    lines.append(f"total: {report['seconds']:.0f} s of a {a.budget_s:.0f} s budget")
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"[gpu-check] report: {os.path.join(a.out, 'report.md')} ({report['seconds']:.0f} s)")
    return 0 if ok else 1


def _tail(text: str, n: int) -> str:
    """The last n characters of a part's output, noise lines (profiler start/stop) left out."""
    kept = "\n".join(line for line in text.splitlines() if "SyncActivityProfilerHandler" not in line)
    return kept[-n:]


if __name__ == "__main__":
    sys.exit(main())
