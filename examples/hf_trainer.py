"""PQT with the Hugging Face Trainer.

    python examples/hf_trainer.py [--steps 30]

Why not `TrainingArguments(torch_compile_backend="pqt")`: Trainer hands the backend name to
accelerate, which accepts only its own list of backend names and refuses others
("'PQT' is not a valid DynamoBackend"). The smallest clean integration is to hand Trainer a
model that is already compiled with PQT, in place, so that it is still the same class
(save_pretrained, generation and Trainer's own checks keep working):

    pqt_compile.compile(model, PQTConfig(format="fp4_e2m1"), inplace=True)
    Trainer(model=model, args=TrainingArguments(..., torch_compile=False), ...,
            callbacks=[PQTStateCallback(cfg)]).train()

PQTStateCallback (pqt_compile/hf_callback.py) puts the PQT seed stream into Trainer's checkpoints,
so that `train(resume_from_checkpoint=...)` draws the uninterrupted run's noise.

Trainer's evaluation runs under no_grad and model.eval(), so it sees the clean weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pqt_compile  # noqa: E402
from examples.train import build_model, load_corpus, split  # noqa: E402


class ByteChunks(torch.utils.data.Dataset):
    """Fixed-length chunks of a byte corpus, as causal-LM examples."""

    def __init__(self, tokens: torch.Tensor, seq: int) -> None:
        self.tokens, self.seq = tokens, seq

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq

    def __getitem__(self, i: int) -> dict:
        x = self.tokens[i * self.seq : (i + 1) * self.seq]
        return {"input_ids": x, "labels": x.clone()}


def make_trainer(out: str, steps: int, config: Optional[pqt_compile.PQTConfig] = None, seq: int = 64, batch: int = 8):
    """A Trainer for a tiny GPT-2 trained with PQT (the integration this example shows)."""
    from transformers import Trainer, TrainingArguments

    from pqt_compile.hf_callback import PQTStateCallback

    train_tokens, val_tokens = split(load_corpus())
    model = build_model("gpt2", "tiny", seq)
    model.config.use_cache = False
    config = config or pqt_compile.PQTConfig(format="fp4_e2m1")
    pqt_compile.compile(model, config, inplace=True)
    args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
                             learning_rate=3e-3, logging_steps=max(1, steps // 5), save_strategy="no", report_to=[],
                             use_cpu=not torch.cuda.is_available(), torch_compile=False, dataloader_num_workers=0)
    return Trainer(model=model, args=args, train_dataset=ByteChunks(train_tokens, seq), eval_dataset=ByteChunks(val_tokens[:4096], seq),
                   callbacks=[PQTStateCallback(config)])


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", default="runs/hf_trainer")
    a = p.parse_args(argv)
    trainer = make_trainer(a.out, a.steps)
    trainer.train()
    metrics = trainer.evaluate()
    print(metrics)
    return metrics


if __name__ == "__main__":
    main()
