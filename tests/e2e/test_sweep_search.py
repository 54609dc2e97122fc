"""Random search, Optuna search and early stopping on the real testbed, with the sample's curve.py.

curve.py's loss has a known optimum (x 1, lr 0.01, layers 4, tanh: it converges to 0, plus
2·e^(-epochs/3) = 0.037 after its 12 epochs) and prints `epoch=N loss=X` every 0.4 s. The
cluster is test_sweep's (7 worker processes on h1, h2, h3 and local). The tests run in file
order and share what they measured: a random search of 16 trials, the same search with the
median pruner, an Optuna search of 16 trials, then that study resumed with a larger budget.
"""

from __future__ import annotations

import re
import statistics
import time

import pytest

from tests.e2e.test_sweep import SWEEP_TIMEOUT, csv_rows, infra, swept  # noqa: F401  (swept: the cluster fixture)

pytestmark = pytest.mark.e2e

TRIALS = 16
COMMAND = ("--", "python", "curve.py", "--sleep", "0.4")
OPTIMUM = 2.0 * 2.718281828459045 ** (-12 / 3)  # the best loss curve.py can report after 12 epochs
BEST_WITHIN = 1.5  # a search's best final loss is at most this far above the optimum
PRUNED_FRACTION = 0.85  # a pruned sweep's total run time is at most this fraction of the same sweep unpruned
measured: dict[str, object] = {}


def space(swept) -> str:  # noqa: F811
    return str(swept["project"] / "space.yml")


def finals(rows: list[dict[str, str]]) -> list[float]:
    return [float(row["loss"]) for row in rows if row["status"] == "ok"]


def run_seconds(rows: list[dict[str, str]]) -> float:
    return sum(float(row["seconds"]) for row in rows if row["seconds"])


def test_a_random_search_runs_the_trials_its_seed_lists_and_finds_one_near_the_optimum(swept):  # noqa: F811
    base = ("sweep", "-f", swept["file"], space(swept), "--search", "random", "--trials", str(TRIALS), "--seed", "0",
            "--sort", "loss")
    listed, again = infra(*base, "--dry-run", *COMMAND), infra(*base, "--dry-run", *COMMAND)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert listed.stdout == again.stdout  # the same seed, the same trials
    other = infra(*base[:-4], "--seed", "1", "--sort", "loss", "--dry-run", *COMMAND)
    assert other.stdout != listed.stdout
    commands = [line.split(None, 1)[1] for line in listed.stdout.splitlines() if re.match(r"^\s+\d+\s+python", line)]
    assert len(commands) == TRIALS

    started = time.monotonic()
    result = infra(*base, "--name", "random", *COMMAND, timeout=SWEEP_TIMEOUT)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert f"sweep 'random': {TRIALS} run(s): {TRIALS} ok" in result.stdout
    rows = csv_rows(swept["project"], "random")
    logs = [(swept["project"] / row["log"]).read_text() for row in rows]
    assert [re.search(r"^# command: (.*)$", log, re.M).group(1) for log in logs] == commands  # the listed trials
    best = min(finals(rows))
    assert best - OPTIMUM <= BEST_WITHIN, sorted(finals(rows))
    measured.update(random_rows=rows, random_seconds=run_seconds(rows))
    print(f"random search, {TRIALS} trials: best {best:.3f} (optimum {OPTIMUM:.3f}), median "
          f"{statistics.median(finals(rows)):.3f}, run time {run_seconds(rows):.1f} s, {took:.1f} s in all")


def test_early_stopping_stops_runs_behind_soon_after_the_decision_saves_time_and_keeps_the_best(swept):  # noqa: F811
    if "random_rows" not in measured:
        pytest.skip("needs the unpruned random search above")
    result = infra("sweep", "-f", swept["file"], space(swept), "--search", "random", "--trials", str(TRIALS),
                   "--seed", "0", "--sort", "loss", "--pruner", "median", "--name", "pruned", *COMMAND,
                   timeout=SWEEP_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    rows = csv_rows(swept["project"], "pruned")
    unpruned = {row["id"]: row for row in measured["random_rows"]}
    assert {row["id"] for row in rows} == set(unpruned)  # the same trials
    pruned = [row for row in rows if row["status"] == "pruned"]
    assert pruned and all(row["status"] in ("ok", "pruned") for row in rows), [r["status"] for r in rows]
    assert f"{TRIALS - len(pruned)} ok, {len(pruned)} pruned" in result.stdout
    # Each pruned run stopped within one reporting step of the decision, and says so in its log.
    decided = {int(m.group(1)): int(m.group(2))
               for m in re.finditer(r"^\[ ?(\d+)/\d+\] pruning at step (\d+)$", result.stdout, re.M)}
    for row in pruned:
        step = decided[int(row["index"])]
        assert int(row["epoch"]) <= step + 1, (row, step)
        assert "infra: stopped early: the sweep's pruner gave up on this run" in (swept["project"] / row["log"]).read_text()
    # The best run of the unpruned sweep ran to its end here too.
    best_id = min(measured["random_rows"], key=lambda row: float(row["loss"]))["id"]
    assert next(row for row in rows if row["id"] == best_id)["status"] == "ok"
    fraction = run_seconds(rows) / measured["random_seconds"]
    assert fraction <= PRUNED_FRACTION, fraction
    assert re.search(r"^early stopping saved about \d+:\d\d of run time", result.stdout, re.M)
    late = max(int(row["epoch"]) - decided[int(row["index"])] for row in pruned)
    print(f"median pruner: {len(pruned)} of {TRIALS} pruned, run time {run_seconds(rows):.1f} s = {fraction:.2f} of "
          f"the unpruned {measured['random_seconds']:.1f} s; pruned runs stopped at most {late} step(s) after the "
          "decision")


def test_an_optuna_search_finds_one_near_the_optimum_better_than_random_search_s_median_and_resumes(swept):  # noqa: F811
    base = ("sweep", "-f", swept["file"], space(swept), "--search", "optuna", "--seed", "0", "--sort", "loss",
            "--name", "optuna")
    started = time.monotonic()
    result = infra(*base, "--trials", str(TRIALS), *COMMAND, timeout=SWEEP_TIMEOUT)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert f"sweep 'optuna': {TRIALS} run(s): {TRIALS} ok" in result.stdout
    rows = csv_rows(swept["project"], "optuna")
    assert [row["index"] for row in rows] == [str(i) for i in range(1, TRIALS + 1)]
    best = min(finals(rows))
    assert best - OPTIMUM <= BEST_WITHIN, sorted(finals(rows))
    if "random_rows" in measured:
        random_median = statistics.median(finals(measured["random_rows"]))
        assert best < random_median, (best, random_median)
    print(f"Optuna (TPE) search, {TRIALS} trials: best {best:.3f} (optimum {OPTIMUM:.3f}), {took:.1f} s in all")

    resumed = infra(*base, "--trials", str(TRIALS + 4), "--resume", *COMMAND, timeout=SWEEP_TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert f"--resume: {TRIALS} of {TRIALS + 4} trials finished earlier" in resumed.stderr
    rows = csv_rows(swept["project"], "optuna")
    assert [row["index"] for row in rows] == [str(i) for i in range(1, TRIALS + 5)]  # trial numbers go on
    assert len(re.findall(r"started on", resumed.stdout)) == 4  # the finished trials are not run again
