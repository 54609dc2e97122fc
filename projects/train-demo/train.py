"""Fit a linear regression by gradient descent on generated data, printing how it learns.

    python train.py [--lr 0.05] [--epochs 30] [--l2 0.0] [--batch-size 32] [--seed 0]

Pure Python, no packages, no download: a sample for `infra sweep` and its report. The data
are 600 samples of 8 features with a known linear target plus noise (deterministic for a
seed), split 80/20 into training and validation sets. After each epoch it prints
`epoch=N loss=L val_loss=V` (the learning curves of the report); the last line is a JSON
object of the results, `{"val_loss": ..., "loss": ..., "epochs_run": ...}`. A learning rate
that is too high makes the loss grow: such runs are plain to see after a few epochs, and
stop early once the loss is no longer a finite number. A bad option exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

SAMPLES, FEATURES, NOISE = 600, 8, 0.3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description="Linear regression by gradient descent.")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate (default: 0.05)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set (default: 30)")
    p.add_argument("--l2", type=float, default=0.0, help="weight decay (default: 0)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the batches (default: 0)")
    args = p.parse_args(argv)
    if not (args.lr > 0 and math.isfinite(args.lr)):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if not (args.l2 >= 0 and math.isfinite(args.l2)):
        p.error(f"--l2 must be 0 or more, got {args.l2}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def make_data(seed: int) -> list[tuple[list[float], float]]:
    """Features of growing scale (1 to 2.4), so a large learning rate diverges: y = w·x + 0.5 + noise."""
    rng = random.Random(seed)
    true_weights = [rng.uniform(-2, 2) for _ in range(FEATURES)]
    data = []
    for _ in range(SAMPLES):
        x = [rng.gauss(0, 1 + 0.2 * j) for j in range(FEATURES)]
        y = sum(w * v for w, v in zip(true_weights, x)) + 0.5 + rng.gauss(0, NOISE)
        data.append((x, y))
    return data


def mse(weights: list[float], bias: float, data: list[tuple[list[float], float]]) -> float:
    try:
        return sum((sum(w * v for w, v in zip(weights, x)) + bias - y) ** 2 for x, y in data) / len(data)
    except OverflowError:
        return math.inf


def train(args: argparse.Namespace) -> dict:
    data = make_data(args.seed)
    split = int(len(data) * 0.8)
    training, validation = data[:split], data[split:]
    rng = random.Random(args.seed + 1)
    weights, bias = [0.0] * FEATURES, 0.0
    loss = val_loss = math.inf
    epoch = 0
    for epoch in range(1, args.epochs + 1):
        rng.shuffle(training)
        for start in range(0, len(training), args.batch_size):
            batch = training[start:start + args.batch_size]
            grad_w, grad_b = [0.0] * FEATURES, 0.0
            for x, y in batch:
                error = sum(w * v for w, v in zip(weights, x)) + bias - y
                for j, v in enumerate(x):
                    grad_w[j] += 2 * error * v
                grad_b += 2 * error
            step = args.lr / len(batch)
            weights = [w - step * g - args.lr * args.l2 * w for w, g in zip(weights, grad_w)]
            bias -= step * grad_b
        loss, val_loss = mse(weights, bias, training), mse(weights, bias, validation)
        if not (math.isfinite(loss) and loss < 1e12):
            print(f"epoch={epoch} loss=inf val_loss=inf", flush=True)
            break  # diverged: nothing more to learn
        print(f"epoch={epoch} loss={loss:.5f} val_loss={val_loss:.5f}", flush=True)
    finite = math.isfinite(val_loss) and val_loss < 1e12
    return {"val_loss": round(val_loss, 5) if finite else None, "loss": round(loss, 5) if finite else None,
            "epochs_run": epoch, "diverged": not finite}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(train(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
