"""Train a logistic regression with mini-batch SGD on generated data, and report how well it did.

    python train.py [--lr 0.1] [--epochs 20] [--batch-size 32] [--shuffle] [--seed 0]
                    [--samples 1000] [--features 4]

Pure Python, no packages: a sample for `infra sweep`. The data are two overlapping Gaussian
clouds (deterministic for a seed), split 80/20 into training and test sets. Each epoch prints
`epoch=N loss=L` (key=value lines); the last line is a JSON object of the results,
`{"accuracy": ..., "loss": ..., "train_seconds": ...}`, which `infra sweep` records as the
run's metrics. A bad option value exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train.py", description="Logistic regression with SGD on generated data.")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training set (default: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per SGD step (default: 32)")
    p.add_argument("--shuffle", action="store_true", help="shuffle the training set before each epoch")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the shuffling (default: 0)")
    p.add_argument("--samples", type=int, default=1000, help="samples generated (default: 1000)")
    p.add_argument("--features", type=int, default=4, help="features per sample (default: 4)")
    args = p.parse_args(argv)
    if not args.lr > 0 or math.isinf(args.lr):
        p.error(f"--lr must be a positive number, got {args.lr}")
    for name in ("epochs", "batch_size", "samples", "features"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def make_data(samples: int, features: int, seed: int) -> list[tuple[list[float], int]]:
    """Two Gaussian clouds whose centres are 0.8 apart on every feature: they overlap, so no model is perfect."""
    rng = random.Random(seed)
    data = []
    for i in range(samples):
        label = i % 2
        centre = 0.4 if label else -0.4
        data.append(([rng.gauss(centre, 1.0) for _ in range(features)], label))
    rng.shuffle(data)
    return data


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def predict(weights: list[float], bias: float, x: list[float]) -> float:
    return sigmoid(sum(w * v for w, v in zip(weights, x)) + bias)


def log_loss(weights: list[float], bias: float, data: list[tuple[list[float], int]]) -> float:
    total = 0.0
    for x, y in data:
        p = min(max(predict(weights, bias, x), 1e-12), 1 - 1e-12)
        total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    return total / len(data)


def accuracy(weights: list[float], bias: float, data: list[tuple[list[float], int]]) -> float:
    right = sum(1 for x, y in data if (predict(weights, bias, x) >= 0.5) == bool(y))
    return right / len(data)


def train(args: argparse.Namespace) -> dict:
    data = make_data(args.samples, args.features, args.seed)
    split = int(len(data) * 0.8)
    training, test = data[:split], data[split:]
    rng = random.Random(args.seed + 1)
    weights, bias = [0.0] * args.features, 0.0
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        if args.shuffle:
            rng.shuffle(training)
        for start in range(0, len(training), args.batch_size):
            batch = training[start:start + args.batch_size]
            grad_w, grad_b = [0.0] * args.features, 0.0
            for x, y in batch:
                error = predict(weights, bias, x) - y
                for j, v in enumerate(x):
                    grad_w[j] += error * v
                grad_b += error
            step = args.lr / len(batch)
            weights = [w - step * g for w, g in zip(weights, grad_w)]
            bias -= step * grad_b
        print(f"epoch={epoch} loss={log_loss(weights, bias, training):.4f}")
    return {
        "accuracy": round(accuracy(weights, bias, test), 4),
        "loss": round(log_loss(weights, bias, test), 4),
        "train_seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"training on {args.samples} samples: lr={args.lr} epochs={args.epochs} "
          f"batch-size={args.batch_size} shuffle={args.shuffle}", file=sys.stderr)
    print(json.dumps(train(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
