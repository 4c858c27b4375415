"""pqt-dump: compile a model with PQT, run one training step, print what happened, write the dumps.

    pqt-dump --preset gpt2-tiny --out dumps/
    pqt-dump --model mypkg.models:make_model --batch 2 --seq 64 --exclude lm_head --out dumps/
    python -m pqt_compile.tools.dump --help

A factory (`module:function`) is called with no arguments and returns either a model, whose
input is a batch of token ids (`--batch` x `--seq`, vocabulary from `model.config.vocab_size`
or `--vocab`), or a tuple (model, example_args).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from .cli import (UsageError, add_config_arguments, add_model_arguments, build, config_from_arguments, eager_outputs,
                  pqt_refusal)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqt-dump", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    add_config_arguments(p)
    p.add_argument("--out", default="pqt_dump", help="directory for the dumps (default ./pqt_dump)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    try:
        if os.path.exists(a.out) and not os.path.isdir(a.out):  # before compiling
            raise UsageError(f"--out {a.out} is a file; give a directory for the dumps")
        config = config_from_arguments(a)
        model, args = build(a.preset, a.factory, a.batch, a.seq, a.vocab)
        eager_outputs(model, args)  # before compiling: compiled code would abort on inputs the model cannot take
    except UsageError as e:
        print(f"pqt-dump: error: {e}", file=sys.stderr)
        return 2
    from .explain import explain

    try:
        report = explain(model, *args, config=config)
    except Exception as e:  # noqa: BLE001 - pqt's refusals (a weight the format cannot block) as one line
        if (refusal := pqt_refusal(e)) is None:
            raise
        print(f"pqt-dump: error: {refusal}", file=sys.stderr)
        return 2
    print(report)
    paths = report.save(a.out)
    print(f"\nwrote {len(paths)} files to {a.out}/ (summary.txt, report.json, graphs per stage, output code)")
    print("tip: TORCH_TRACE=DIR pqt-dump ... then tlparse DIR shows these graphs next to PyTorch's own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
