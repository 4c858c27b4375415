"""Does PQT pay? Train a small GPT-2 or Llama with each recipe side by side, quantize, compare.

Arms (`--arms`), all from the same weights on the same batches, their steps interleaved so that
all are timed alike:
  baseline  plain training (`torch.compile`, default backend)
  pqt       PQT: `pqt_compile.compile(model, PQTConfig(format, ...))`, a fresh sample per step
  ste       straight-through fake-quant QAT on exactly the grid `quantize_model` deploys:
            `PQTConfig(mode="ste")`, the same pass and lowering with a round-to-nearest forward
  pqt-ste   PQT, then STE for the last `--ste-fraction` of the steps
  pqt-anneal  PQT with the noise std stepped down by quarters: 1, 3/4, 1/2, 1/4 of its value
  torchao   torchao's int4/int8 fake-quant QAT (nn.Linear only), where torchao is installed
Every arm's validation loss is measured clean and after round-to-nearest quantization to the
target format (`quantize_model`'s grid) at the start and at each evaluation; at the end also to
a lower format and to `--deploy-grids` (a model deployed to a format it was not trained for).
`--seeds 0,1,2` repeats the run per seed and reports mean and spread. Scenarios: `scratch` (from
random weights) and `finetune` (from a checkpoint pretrained without quantization, cached in
--out; one for every seed with `--pretrain-seed`). The project's recommended arm is exported in
packed form and every arm as GGUF for llama.cpp.

Presets (`--preset`; flags given beside it override its values):
  gpu-124m   GPT-2 124M's shape (12 x 768, seq 1024, the byte vocabulary: 86M parameters) on one
             CUDA GPU under bf16 autocast, fine-tuning on the whole standard library's source,
             2 seeds, within a 420 s time limit (set-up and compiles included): the fine-tuning
             steps are sized to the limit from the first steps' measured times
  cpu-smoke  the same code path on the tiny model, for seconds of training (CI runs it)
With `--time-limit` the job stops cleanly when the time runs out (before a training step that
would leave too little for the final evaluation) and writes what it has, marked partial.

Data: bytes (vocabulary 256) of a fixed list of Python standard-library modules, present on
every machine with Python (`--corpus stdlib-all`: every module's source); `--data FILE` trains
on your own text instead.

    python examples/train.py                          # the default run, ~5 min on 2 CPU cores
    python examples/train.py --scenario scratch --seeds 0,1,2 --arms baseline,pqt,ste
    python examples/train.py --preset gpu-124m        # one H200, 7 minutes
    python examples/train.py --preset cpu-smoke       # the GPU run's code path, tiny, on the CPU
"""

from __future__ import annotations

import time

_T0 = time.monotonic()  # the time limit counts from here: imports and set-up included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pqt_compile.tools.offline import hub_offline  # noqa: E402

hub_offline()  # the job downloads nothing: a library that tries fails at once (HF_HUB_OFFLINE=0 allows it)
import pqt_compile  # noqa: E402
import pqt_compile.compat  # noqa: E402
import pqt_compile.reference  # noqa: E402
from pqt_compile import PQTConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_report  # noqa: E402
from train_arms import ARMS  # noqa: E402
from train_budget import ASSUMED, PRESETS, Deadline  # noqa: E402
from train_data import CORPORA, SIZES, STDLIB_MODULES, build_model, get_batch, load_corpus, split  # noqa: E402,F401
from train_loop import Job, OnStep, evaluate, lm_loss, lr_at  # noqa: E402,F401

#: The arm this project recommends for the target format (docs/results.md, issue 16): exported
#: in packed form and named in the verdict.
RECOMMENDED = "pqt-ste"
SCENARIO_DEFAULTS = {  # scenario: (lr, warmup)
    "scratch": (3e-3, 50),
    "finetune": (5e-4, 20),
}


def _steps(text: str):
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of steps or auto") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least 1 step")
    return n


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), help="a named run (see above); other flags override its values")
    p.add_argument("--arch", default="gpt2", choices=["gpt2", "llama"])
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--seq", type=int, help="sequence length (default: the size's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scenario", default="finetune", choices=list(SCENARIO_DEFAULTS),
                   help="scratch: from random weights; finetune: from a checkpoint pretrained without quantization")
    p.add_argument("--pretrain-steps", type=int, default=1000, help="finetune: steps of the pretraining (cached in --out)")
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--pretrain-seed", type=int, help="one pretraining, with this seed, for every seed (default: one per seed)")
    p.add_argument("--pretrain-dir", help="where pretrained checkpoints are cached (default: --out)")
    p.add_argument("--steps", type=_steps, default=500,
                   help="fine-tuning steps per arm and seed, or auto: the most that fit --time-limit")
    p.add_argument("--time-limit", type=float, help="seconds for the whole job, set-up included; it stops cleanly "
                                                     "and writes partial results when they run out (default: none)")
    p.add_argument("--calibrate-steps", type=int, default=8,
                   help="steps timed before --steps auto is sized again from them (at most --warmup)")
    p.add_argument("--min-steps", type=int, help="--steps auto: at least this many (default: 2 calibrate-steps + 2)")
    p.add_argument("--max-steps", type=int, default=100_000, help="--steps auto: at most this many")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 3e-3 scratch, 5e-4 finetune)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default: 50 scratch, 20 finetune)")
    p.add_argument("--arms", default="baseline,pqt,ste,pqt-ste", help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--ste-fraction", type=float, default=0.25, help="pqt-ste: the last fraction of steps trained with STE")
    p.add_argument("--format", default="fp4_e2m1", help="target storage format (the arms train for it)")
    p.add_argument("--lower-format", default="int3", help="a second format to quantize every model to")
    p.add_argument("--deploy-grids", default="", metavar="FMT:BLOCK,...",
                   help="more grids to deploy to at the end, e.g. fp4_e2m1:16,int4:32 (robustness to another format)")
    p.add_argument("--block-size", default=None, help="elements per block, 'row' or 'tensor' (default: the format's: 32, "
                                                     "or 16 for nvfp4)")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "uniform", "rounded_gaussian"])
    p.add_argument("--noise-std", type=float, default=None, help="noise std in steps (default: the noise's own)")
    p.add_argument("--exclude", action="append", default=None, metavar="REGEX",
                   help="weights kept out of PQT and of quantization (repeatable; default: none)")
    p.add_argument("--data", help="train on this text file instead of the standard library")
    p.add_argument("--corpus", default="stdlib", choices=list(CORPORA),
                   help="stdlib: a fixed list of modules (0.9 MB); stdlib-all: every module's source (8-9 MB)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (the weights stay fp32)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--eval-every", default="100", help="steps between evaluations, or auto: --evals of them")
    p.add_argument("--evals", type=int, default=4, help="--eval-every auto: evaluations over the fine-tuning")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each repeats the whole comparison")
    p.add_argument("--out", default="runs/train", help="directory for results.json, loss.png and the exports")
    p.add_argument("--no-export", action="store_true", help="skip the packed and GGUF exports")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the budget and exit (no device is needed)")
    first, _ = p.parse_known_args(argv)
    if first.preset:
        p.set_defaults(**PRESETS[first.preset])
    a = p.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    bad = sorted(set(arms) - set(ARMS))
    if bad or not arms:
        p.error(f"--arms {a.arms!r}: unknown arm(s) {bad}; choose from {', '.join(ARMS)}")
    if "baseline" not in arms:
        arms.insert(0, "baseline")  # every verdict is against it
    a.arm_list = arms
    try:
        a.seed_list = [int(s) for s in a.seeds.split(",") if s]
    except ValueError:
        a.seed_list = []
    if not a.seed_list:
        p.error(f"--seeds {a.seeds!r}: expected one or more comma-separated integers, e.g. 0,1,2")
    # Counts checked here, before the set-up: they failed with a traceback after it (or after training).
    for flag, value, least in (("--batch", a.batch, 1), ("--eval-batches", a.eval_batches, 1), ("--evals", a.evals, 1),
                               ("--pretrain-steps", a.pretrain_steps, 0), ("--warmup", a.warmup, 0),
                               ("--threads", a.threads, 1), ("--seq", a.seq, 2), ("--calibrate-steps", a.calibrate_steps, 1)):
        if value is not None and value < least:
            p.error(f"{flag} {value}: must be at least {least}")
    if not 0 < a.ste_fraction < 1:
        p.error(f"--ste-fraction {a.ste_fraction}: must be in (0, 1)")
    lr, warmup = SCENARIO_DEFAULTS[a.scenario]
    a.lr = lr if a.lr is None else a.lr
    a.warmup = warmup if a.warmup is None else a.warmup
    if a.eval_every != "auto" and not (a.eval_every.isdigit() and int(a.eval_every) > 0):
        p.error(f"--eval-every {a.eval_every!r}: give a number of steps > 0 or auto")
    if a.time_limit is not None and not a.time_limit > 0:
        p.error(f"--time-limit {a.time_limit}: give a number of seconds > 0")
    if a.steps == "auto":
        if a.time_limit is None:
            p.error("--steps auto sizes the run to --time-limit: give one (e.g. --time-limit 420) or a number of steps")
        if not 1 <= a.calibrate_steps <= a.warmup:
            p.error(f"--calibrate-steps {a.calibrate_steps}: must be in [1, --warmup {a.warmup}]: the steps timed before "
                    "sizing must not depend on the step count (their learning rate is the warm-up's)")
    a.min_steps = 2 * a.calibrate_steps + 2 if a.min_steps is None else a.min_steps
    if not 1 <= a.min_steps <= a.max_steps:
        p.error(f"--min-steps {a.min_steps} / --max-steps {a.max_steps}: need 1 <= min <= max")
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available() and not a.dry_run:
        p.error(f"--device {a.device}: torch sees no CUDA device here (torch {torch.__version__}); "
                "use --preset cpu-smoke for the same code path on the CPU, or --device cpu")
    return a


def pqt_config(a: argparse.Namespace) -> PQTConfig:
    try:
        return PQTConfig(format=a.format, block_size=_block(a.block_size), noise=a.noise, noise_std=a.noise_std,
                         exclude=tuple(a.exclude or ()))
    except ValueError as e:  # the config says what is wrong and how to fix it: one line, no traceback
        raise SystemExit(f"train.py: {e}") from None


def _block(b):
    return b if b in (None, "row", "tensor") else int(b)


def deploy_grids(a: argparse.Namespace, cfg: PQTConfig) -> dict[str, PQTConfig]:
    """{label: config} of every grid the final models are quantized to; the target's label is its format."""
    try:
        grids = {cfg.format: cfg, a.lower_format: cfg.replace(format=a.lower_format)}
    except ValueError as e:
        raise SystemExit(f"--lower-format {a.lower_format!r}: {e}") from None
    for g in (x for x in a.deploy_grids.split(",") if x):
        fmt, _, b = g.partition(":")
        try:
            grids[g] = cfg.replace(format=fmt, block_size=_block(b or None))
        except ValueError as e:
            raise SystemExit(f"--deploy-grids {g!r}: {e}") from None
    return grids


def environment(a: argparse.Namespace) -> dict:
    """Where the numbers come from: versions, the device, the commit (when run from a git checkout)."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "pqt_compile": pqt_compile.__version__,
           "device": a.device, "cpu_threads": torch.get_num_threads()}
    if torch.device(a.device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(a.device))
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def run(a: argparse.Namespace, clock: Callable[[], float] = time.monotonic, started: Optional[float] = None,
        on_step: Optional[OnStep] = None) -> tuple[dict, dict, PQTConfig]:
    """Every seed, within the time limit; returns (results, the first seed's models, config)."""
    deadline = Deadline(a.time_limit, clock, started)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    cuda = torch.device(a.device).type == "cuda"
    if a.threads:
        torch.set_num_threads(a.threads)
    if cuda:  # TF32 for what runs in fp32 outside autocast
        torch.set_float32_matmul_precision("high")
    try:
        return _run(a, deadline, on_step)
    finally:  # a caller in the same process (a test) keeps its own settings
        torch.set_num_threads(threads)
        if cuda:  # only then: setting it at all changes Inductor's cache key of every later compile
            torch.set_float32_matmul_precision(precision)


def _run(a: argparse.Namespace, deadline: Deadline, on_step: Optional[OnStep]) -> tuple[dict, dict, PQTConfig]:
    cfg = pqt_config(a)
    grids = deploy_grids(a, cfg)  # refuse a bad grid before training
    corpus = split(load_corpus(a.data, a.corpus))
    job = Job(a, cfg, grids, corpus, ASSUMED[torch.device(a.device).type], deadline, on_step)
    if not a.no_progress and sys.stderr.isatty():  # elsewhere (a log file) a line per evaluation instead
        try:
            from tqdm import tqdm

            job.bar = tqdm(total=None, desc=f"fine-tuning {', '.join(a.arm_list)}", unit="step")
            job.log = job.bar.write
        except ImportError:
            pass
    # Every arm's model runs the same forward code, so Dynamo keeps one cache entry per compiled
    # stage on that code: more than its default limit of 8 with every arm, past which a stage
    # would silently run eagerly (unsampled). Raised for this run only.
    with pqt_compile.compat.dynamo_recompile_limit(64):
        job.plan()
        if job.bar is not None:
            job.bar.total = job.steps * len(a.seed_list)
        per_seed = job.run()
    if job.bar is not None:
        job.bar.close()
    # The aggregate is over whole seeds; a seed cut short joins it only when no seed is whole.
    whole = [r for r in per_seed if r["complete"]]
    results = {"args": {k: v for k, v in vars(a).items()}, "seq": job.seq, "config": cfg.to_options(),
               "per_seed": whole or per_seed, "partial_seeds": [r for r in per_seed if not r["complete"]] if whole else [],
               "stopped": job.stopped, "budget": job.budget, "compiles": job.compiles, "environment": environment(a),
               "corpus_bytes": len(corpus[0]) + len(corpus[1]),
               "parameters": sum(p.numel() for p in next(iter(job.arms.values())).model.parameters()) if job.arms else None,
               "fine_tuning_done_s": deadline.elapsed()}
    return results, {k: arm.model for k, arm in job.arms.items()}, cfg


def write_gguf_files(models: dict, cfg: PQTConfig, results: dict, a: argparse.Namespace) -> dict:
    """Write every arm's model (the first seed's) as GGUF in the target format (what llama.cpp and Ollama run), print
    where, and, if llama-cpp-python is installed, their validation loss as llama.cpp computes it
    on `evaluate`'s batches, beside the PyTorch loss after quantization."""
    from pqt_compile.export import ExportError, write_gguf
    from pqt_compile.export.llamacpp import llamacpp_available, llamacpp_loss

    val, seq = split(load_corpus(a.data, a.corpus))[1], results["seq"]
    out: dict = {}
    for k, m in models.items():
        path = os.path.join(a.out, f"{k}_model.gguf")
        try:
            out[k] = {"path": path, "bytes": write_gguf(m, path, cfg, force=True).bytes}
        except (ExportError, ImportError) as e:  # a format GGUF cannot hold, or no gguf package
            out[k] = {"error": f"{type(e).__name__}: {e}"}
            print(f"GGUF {k}: not written ({out[k]['error']})")
            continue
        line = f"GGUF {k}: {path} ({out[k]['bytes']} bytes)"
        if llamacpp_available():
            g = torch.Generator().manual_seed(1234)  # evaluate()'s batches
            batches = [get_batch(val, a.batch, seq, g) for _ in range(a.eval_batches)]
            out[k]["llamacpp_val_loss"] = sum(llamacpp_loss(path, x, y) for x, y in batches) / len(batches)
            line += (f"; val loss in llama.cpp {out[k]['llamacpp_val_loss']:.4f}, "
                     f"in PyTorch after {cfg.format} quantization {results['per_seed'][0]['eval'][k][cfg.format]:.4f}")
        else:
            line += "; pip install llama-cpp-python to see its val loss in llama.cpp"
        print(line)
    return out


def main(argv: Optional[list[str]] = None, *, clock: Optional[Callable[[], float]] = None,
         on_step: Optional[OnStep] = None) -> dict:
    """Run the job. `clock` (time.monotonic by default; the limit counts from the process start when
    run as a script, else from this call) and `on_step(phase, seed, step)` are for tests."""
    a = parse_args(argv)
    if a.dry_run:
        job = Job(a, pqt_config(a), deploy_grids(a, pqt_config(a)), (None, None), ASSUMED[torch.device(a.device).type],
                  Deadline(a.time_limit))
        job.plan()
        return {"budget": job.budget}
    os.makedirs(a.out, exist_ok=True)
    clock = clock or time.monotonic
    started = _T0 if __name__ == "__main__" and clock is time.monotonic else clock()
    results, models, cfg = run(a, clock, started, on_step)
    if results["per_seed"]:
        results["aggregate"] = train_report.aggregate(results)
        results["verdict"] = train_report.verdict(results, cfg.format, RECOMMENDED)
        print("\n" + train_report.report(results, cfg.format))
        if not a.no_export:
            deploy = RECOMMENDED if RECOMMENDED in models else a.arm_list[-1]
            export_path = os.path.join(a.out, f"{deploy}_model.pt")
            pqt_compile.export.save(models[deploy], export_path, cfg, force=True)  # this run's own output
            results["export"] = {"arm": deploy, "path": export_path, "bytes": os.path.getsize(export_path)}
            results["gguf"] = write_gguf_files(models, cfg, results, a)
            print(f"packed {deploy} model: {export_path} ({results['export']['bytes']} bytes)")
        print(train_report.plot(results, cfg.format, os.path.join(a.out, "loss.png")))
    else:
        print(f"\nno results: {results['stopped']['reason']}; nothing was fine-tuned (raise --time-limit)")
    results["wall_s"] = clock() - started  # everything but writing this file
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"numbers: {os.path.join(a.out, 'results.json')} (wall time {results['wall_s']:.0f} s"
          + (f" of the {a.time_limit:g} s limit)" if a.time_limit else ")"))
    return results


if __name__ == "__main__":
    main()
