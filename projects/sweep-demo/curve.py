"""A synthetic training run with a known optimum: a sample for random search, Optuna and early stopping.

    python curve.py --x 0.5 --lr 0.003 --layers 3 --activation relu [--epochs 12] [--sleep 0.25]

No data, no packages. The loss a run converges to is

    (x - 1)² + 0.5·(log10(lr) + 2)² + 0.05·(layers - 4)² + {tanh: 0, relu: 0.2, sigmoid: 0.5}[activation]

so the optimum is x = 1, lr = 0.01, layers = 4, tanh, where it is 0. Each epoch the loss comes
down towards it (`final + 2·e^(-epoch/3)`) with a little noise (standard deviation 0.02, the
same for the same options, so a run repeated gives the same numbers), and the run prints
`epoch=N loss=X`, then sleeps `--sleep` seconds: a run's curve says early how good it will be,
which is what early stopping uses. The last line is `{"loss": ..., "epoch": N}`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

PENALTY = {"tanh": 0.0, "relu": 0.2, "sigmoid": 0.5}
NOISE = 0.02


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="curve.py", description="A synthetic training curve with a known optimum.")
    p.add_argument("--x", type=float, default=0.0, help="a parameter whose best value is 1 (default: 0)")
    p.add_argument("--lr", type=float, default=0.1, help="a learning rate, best 0.01 (default: 0.1)")
    p.add_argument("--layers", type=int, default=2, help="an integer, best 4 (default: 2)")
    p.add_argument("--activation", choices=sorted(PENALTY), default="relu", help="best: tanh (default: relu)")
    p.add_argument("--epochs", type=int, default=12, help="epochs, one line each (default: 12)")
    p.add_argument("--sleep", type=float, default=0.25, help="seconds per epoch (default: 0.25)")
    args = p.parse_args(argv)
    if not args.lr > 0 or math.isinf(args.lr):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if args.epochs < 1 or args.sleep < 0:
        p.error("--epochs must be at least 1 and --sleep at least 0")
    return args


def final_loss(args: argparse.Namespace) -> float:
    """What the run converges to: 0 at the optimum."""
    return ((args.x - 1) ** 2 + 0.5 * (math.log10(args.lr) + 2) ** 2 + 0.05 * (args.layers - 4) ** 2
            + PENALTY[args.activation])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = final_loss(args)
    # The noise depends on the options only: the same run gives the same curve on any host.
    rng = random.Random(f"{args.x!r} {args.lr!r} {args.layers} {args.activation}")
    loss = target
    for epoch in range(1, args.epochs + 1):
        loss = target + 2.0 * math.exp(-epoch / 3) + rng.gauss(0, NOISE)
        print(f"epoch={epoch} loss={loss:.5f}", flush=True)
        time.sleep(args.sleep)
    print(json.dumps({"loss": round(loss, 5), "epoch": args.epochs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
