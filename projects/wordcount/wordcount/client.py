"""Submit a word count to the cluster and print the result.

    python -m wordcount.client [--file F] [--chunk-words N] [--top N]
                               [--output output/wordcount.csv] [--timeout S]
                               [--queue Q] [--verify]

The text is split into chunks at whitespace; one `count_words` task per chunk runs
on the workers, and the chord callback `merge_counts` sums them. The top words are
printed as a table, all counts are written to a CSV file. On a timeout or when the
broker or result backend cannot be reached, one line goes to stderr and the exit
status is 1.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from pathlib import Path

from . import text

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_FILE = PROJECT_DIR / "data" / "sample.txt"


class ClientError(Exception):
    """A failure reported as one line, without a traceback."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m wordcount.client",
        description="Count the words of a text on the Celery cluster (map/reduce with a chord).",
    )
    p.add_argument("--file", type=Path, default=DEFAULT_FILE,
                   help="text file to count (default: the project's data/sample.txt)")
    p.add_argument("--chunk-words", type=int, default=300, metavar="N",
                   help="words per task (default: 300)")
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="how many of the most frequent words to print (default: 10)")
    p.add_argument("--output", type=Path, default=Path("output/wordcount.csv"),
                   help="CSV file for all counts (default: output/wordcount.csv)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds to wait for the result (default: 120)")
    p.add_argument("--queue", default=None,
                   help="queue to send the tasks to (default: Celery's default queue)")
    p.add_argument("--verify", action="store_true",
                   help="also count locally and fail if the cluster's count differs")
    args = p.parse_args(argv)
    if args.chunk_words < 1:
        p.error("--chunk-words must be at least 1")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def _quiet_libraries() -> None:
    # Celery/kombu/redis log their own retries; the client reports failures itself.
    for name in ("celery", "kombu", "amqp", "redis"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


def _check_connections(app) -> None:
    """Fail fast, with a clear message, when the broker or the result backend is down."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=app.conf.broker_connection_timeout)
    except Exception as exc:  # kombu raises OperationalError, amqp raises OSError subclasses
        raise ClientError(f"cannot reach the broker: {_short(exc)}") from None
    client = getattr(app.backend, "client", None)
    if client is not None and hasattr(client, "ping"):
        try:
            client.ping()
        except Exception as exc:
            raise ClientError(f"cannot reach the result backend: {_short(exc)}") from None


def run(args: argparse.Namespace) -> dict:
    try:
        content = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClientError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    chunks = text.chunk_text(content, args.chunk_words)
    if not chunks:
        raise ClientError(f"{args.file} has no words")

    _quiet_libraries()
    from celery import chord
    from celery.exceptions import TimeoutError as CeleryTimeout

    from .celery_app import app
    from .tasks import count_words, merge_counts

    _check_connections(app)
    # Tasks nobody waits for any more are dropped by the workers (state REVOKED).
    options = {"expires": args.timeout}
    if args.queue:
        options["queue"] = args.queue
    started = time.monotonic()
    try:
        header = [count_words.s(chunk).set(**options) for chunk in chunks]
        result = chord(header)(merge_counts.s().set(**options))
        summary = result.get(timeout=args.timeout)
    except CeleryTimeout:
        raise ClientError(
            f"no result after {args.timeout:g} s ({len(chunks)} tasks sent): "
            "are workers running and consuming the queue?"
        ) from None
    except ClientError:
        raise
    except Exception as exc:  # broker/backend trouble, or a task that failed
        raise ClientError(f"{type(exc).__name__}: {_short(exc)}") from None
    summary["seconds"] = time.monotonic() - started
    summary["distinct"] = len(summary["counts"])

    if args.verify:
        local = text.count_words(content)
        if local != summary["counts"]:
            diff = sorted(set(local.items()) ^ set(summary["counts"].items()))[:5]
            raise ClientError(f"the cluster's count differs from a local count, e.g. {diff}")
    return summary


def write_csv(path: Path, counts: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["word", "count"])
        w.writerows(text.top_words(counts))
    os.replace(tmp, path)


def report(args: argparse.Namespace, summary: dict) -> str:
    top = text.top_words(summary["counts"], args.top)
    width = max([4] + [len(w) for w, _ in top])
    lines = [
        f"{summary['words']} words ({summary['distinct']} distinct) from {args.file}",
        f"{summary['chunks']} chunks of up to {args.chunk_words} words, "
        f"counted by {len(summary['workers'])} worker(s) in {summary['seconds']:.2f} s",
        "",
        f"{'rank':>4}  {'word':<{width}}  {'count':>7}",
    ]
    lines += [f"{i:>4}  {w:<{width}}  {c:>7}" for i, (w, c) in enumerate(top, 1)]
    lines += ["", "workers: " + ", ".join(summary["workers"])]
    if args.verify:
        lines.append("verified: the cluster's count equals a local count")
    lines.append(f"all counts written to {args.output}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
        write_csv(args.output, summary["counts"])
    except ClientError as exc:
        print(f"wordcount: error: {exc}", file=sys.stderr)
        # After a timeout, results still being waited for unsubscribe from Redis in
        # AsyncResult.__del__ at interpreter exit, which fails there with a
        # traceback (a Celery shutdown quirk). The error is already reported.
        sys.unraisablehook = lambda unraisable: None
        return 1
    except OSError as exc:
        print(f"wordcount: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wordcount: interrupted", file=sys.stderr)
        return 130
    print(report(args, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
