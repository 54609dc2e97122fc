"""Random search, Optuna search and early stopping: the space file, the trials, the driver's study, the runner's stop."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.errors import ConfigError
from infra.runtime import protocol
from infra.runtime.command import RedisChannel
from infra.runtime.driver import Driver, Output
from infra.runtime.metrics import intermediate_report
from infra.sweep.parameters import parse_parameters
from infra.sweep.plan import driver_plan, runs_of, select_runs
from infra.sweep.search import SearchOptions, parse_space, pruning_saved_seconds, random_trials
from tests.unit.test_sweep_runtime import SIGNING_KEY, FakeChannel, FakeRedis, FakeSender, Lines, run
from tests.unit.test_sweep_workflow import CLUSTER

SPACE = """\
x: {uniform: [-2.0, 3.0]}
lr: {loguniform: [1.0e-5, 1.0e-1]}
layers: {int: [1, 8]}
width: {int: [16, 512], log: true}
activation: {choice: [relu, tanh]}
shuffle: true
"""


# --------------------------------------------------------------------------- the space file


def test_a_space_reads_each_distribution_in_the_files_order():
    space = parse_space(SPACE, "space.yml")
    assert space.names == ["x", "lr", "layers", "width", "activation", "shuffle"]
    assert [d.kind for d in space.dimensions] == ["uniform", "loguniform", "int", "int", "choice", "value"]
    assert space.dimensions[3].log and not space.dimensions[2].log
    assert space.describe() == ("x: uniform [-2.0, 3.0], lr: loguniform [1e-05, 0.1], layers: int [1, 8], "
                                "width: int [16, 512] (log), activation: one of 2, shuffle: 1 value")
    assert space.to_plan()[1] == {"name": "lr", "kind": "loguniform", "low": 1e-05, "high": 0.1, "log": False}
    assert space.size is None and parse_space("a: {int: [1, 3]}\nb: {choice: [p, q]}\n").size == 6


@pytest.mark.parametrize("text, message", [
    ("a: 1\nlr: [0.1, 0.01]\n", "lr: a list of values is a grid's (--search grid); a search needs a distribution"),
    ("lr: {values: [0.1]}\n", "lr: a list of values is a grid's"),
    ("a: 1\nb: 2\nepochs: {range: [1, 5]}\n", "epochs: a range is a grid's"),
    ("epochs: !!python/tuple [1, 5]\n", "epochs: a range is a grid's"),
    ("x: {uniform: [3.0, 1.0]}\n", "x: uniform needs low < high, got [3.0, 1.0]"),
    ("x: {uniform: [0, 1e-3]}\n", "x: uniform bounds must be numbers, got '1e-3' (YAML reads a number"),
    ("lr: {loguniform: [0, 1]}\n", "lr: loguniform needs low > 0"),
    ("n: {int: [1.5, 4]}\n", "n: int bounds must be whole numbers, got 1.5"),
    ("n: {int: [0, 4], log: true}\n", "n: {int: ..., log: true} needs low >= 1, got 0"),
    ("x: {uniform: [0, 1], log: true}\n", "x: log: applies to {int: [low, high]}"),
    ("x: {normal: [0, 1]}\n", "x: a distribution is one of {uniform: [low, high]}"),
    ("x: {uniform: [0, 1], choice: [a]}\n", "x: a distribution is one of"),
    ("c: {choice: []}\n", "c: choice needs a list of values"),
    ("c: {choice: [a, a]}\n", "c: the choice 'a' is listed twice"),
    ("c: {choice: [[1, 2]]}\n", "c: cannot use [1, 2] as a choice"),
])
def test_a_bad_space_is_one_line_naming_the_parameter_file_and_line(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_space(text, "space.yml")
    error = str(caught.value)
    line = text.count("\n")
    assert error.startswith(message) and error.endswith(f"(space.yml:{line})") and "\n" not in error


def test_a_grid_refuses_a_distribution_with_its_line():
    with pytest.raises(ConfigError) as caught:
        parse_parameters("a: [1, 2]\nlr: {loguniform: [1.0e-5, 1.0e-1]}\n", "parameters.yml")
    assert str(caught.value) == ("lr: {loguniform: ...} is a distribution, for --search random or optuna; "
                                 "a grid lists values (parameters.yml:2)")


# --------------------------------------------------------------------------- random search


def test_random_trials_are_the_same_for_the_same_seed_and_differ_for_another():
    space = parse_space(SPACE)
    first, again, other = random_trials(space, 20, 7), random_trials(space, 20, 7), random_trials(space, 20, 8)
    assert first == again and first != other
    assert len(set(first)) == 20
    for trial in first:
        values = dict(trial)
        assert -2.0 <= values["x"] <= 3.0 and 1e-5 <= values["lr"] <= 0.1
        assert 1 <= values["layers"] <= 8 and 16 <= values["width"] <= 512 and isinstance(values["width"], int)
        assert values["activation"] in ("relu", "tanh") and values["shuffle"] is True
        assert float(f"{values['x']:.6g}") == values["x"]  # six significant digits: readable command lines


def test_random_trials_spread_over_the_log_scale():
    space = parse_space("lr: {loguniform: [1.0e-6, 1.0]}\n")
    draws = [dict(t)["lr"] for t in random_trials(space, 400, 0)]
    below = sum(1 for value in draws if value < 1e-3)
    assert 150 < below < 250  # half of the log range lies below 1e-3; a uniform draw would put ~0 there


def test_a_space_too_small_for_the_trials_is_refused():
    with pytest.raises(ConfigError, match=r"the space holds 4 distinct trial\(s\), fewer than --trials 5"):
        random_trials(parse_space("a: {int: [1, 2]}\nb: {choice: [x, y]}\n", "s.yml"), 5, 0)


def test_a_random_searchs_runs_are_numbered_and_found_again_by_resume():
    trials = random_trials(parse_space(SPACE), 4, 1)
    runs = runs_of(trials, ("python", "curve.py"))
    assert [run.index for run in runs] == [1, 2, 3, 4]
    assert runs == runs_of(random_trials(parse_space(SPACE), 4, 1), ("python", "curve.py"))
    assert runs[0].argv[:4] == ("python", "curve.py", "--x", repr(dict(trials[0])["x"]))
    assert "--shuffle" in runs[0].argv
    previous = {runs[0].id: "ok", runs[1].id: "pruned", runs[2].id: "failed"}
    selection = select_runs(runs, previous, resume=True)
    assert [run.index for run in selection.to_run] == [3, 4] and [run.index for run in selection.done] == [1, 2]


# --------------------------------------------------------------------------- the options


@pytest.mark.parametrize("options, objective, message", [
    (SearchOptions("grid", trials=4), None, "--trials is for --search random or optuna"),
    (SearchOptions("grid", seed=1), None, "--seed is for --search random or optuna"),
    (SearchOptions("random"), None, "--search random needs --trials N"),
    (SearchOptions("random", trials=4, sampler="tpe"), None, "--sampler is for --search optuna"),
    (SearchOptions("optuna", trials=4), None, "--search optuna needs --sort METRIC, the study's objective"),
    (SearchOptions("grid", pruner="median"), None, "--pruner median needs --sort METRIC, what the pruner compares"),
])
def test_options_that_do_not_go_together_are_refused(options, objective, message):
    with pytest.raises(ConfigError, match="^sweep: " + message.replace("(", r"\(").replace(")", r"\)")):
        options.check(objective)


def test_options_that_go_together_pass():
    assert SearchOptions("optuna", trials=4).check("loss").uses_study
    assert SearchOptions("random", trials=4, pruner="halving").check("loss").uses_study
    assert not SearchOptions("random", trials=4).check(None).uses_study
    assert SearchOptions("random", trials=4).effective_seed == 0


def test_the_command_line_refuses_bad_search_options_in_one_line(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("print(1)\n")
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "grid.yml").write_text("lr: [0.1, 0.01]\n")
    (tmp_path / "space.yml").write_text("lr: {loguniform: [1.0e-5, 1.0e-1]}\nepochs: [5, 10]\n")
    base = ["sweep", "-f", str(tmp_path / "cluster.yaml")]
    cases = [
        (["grid.yml", "--trials", "3"], "error: sweep: --trials is for --search random or optuna "
                                        "(a grid runs every combination)"),
        (["space.yml", "--search", "random"], "error: sweep: --search random needs --trials N, the number of runs"),
        (["space.yml", "--search", "optuna", "--trials", "3"], "error: sweep: --search optuna needs --sort METRIC, "
                                                               "the study's objective: --sort loss (lowest best) or "
                                                               "--sort -accuracy (highest best)"),
        (["space.yml", "--search", "random", "--trials", "3"],
         f"error: epochs: a list of values is a grid's (--search grid); a search needs a distribution: "
         f"{{uniform: [low, high]}}, {{loguniform: [low, high]}}, {{int: [low, high]}} or {{choice: [...]}} "
         f"({tmp_path / 'space.yml'}:2)"),
        (["space.yml"], f"error: lr: {{loguniform: ...}} is a distribution, for --search random or optuna; "
                        f"a grid lists values ({tmp_path / 'space.yml'}:1)"),
    ]
    for args, expected in cases:
        args = [str(tmp_path / args[0]), *args[1:]]
        result = CliRunner().invoke(main, [*base, *args, "--dry-run", "--", "python", "train.py"])
        assert result.exit_code == 2 and result.output.strip() == expected, result.output
    bad_pruner = CliRunner().invoke(main, [*base, str(tmp_path / "grid.yml"), "--pruner", "sometimes", "--", "x"])
    assert bad_pruner.exit_code == 2 and "Invalid value for '--pruner'" in bad_pruner.output


def test_a_dry_run_of_a_random_search_lists_its_trials_and_the_same_seed_lists_the_same(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("print(1)\n")
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    (tmp_path / "space.yml").write_text(SPACE)
    args = ["sweep", "-f", str(tmp_path / "cluster.yaml"), str(tmp_path / "space.yml"), "--search", "random",
            "--trials", "5", "--sort", "loss", "--pruner", "median", "--dry-run", "--", "python", "train.py"]
    first, again = CliRunner().invoke(main, [*args[:-3], "--seed", "3", *args[-3:]]), CliRunner().invoke(
        main, [*args[:-3], "--seed", "3", *args[-3:]])
    other = CliRunner().invoke(main, [*args[:-3], "--seed", "4", *args[-3:]])
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert lines[0].startswith(f"sweep 'space' of {tmp_path / 'space.yml'}: random search, 5 trials (seed 3); "
                               "early stopping: median pruner (x: uniform")
    assert sum(1 for line in lines if line.startswith("  ") and "python train.py --x" in line) == 5
    assert lines[-1] == "study: output/sweep-space/study.journal on the master (--resume continues it)"
    assert first.output == again.output and first.output != other.output
    optuna = CliRunner().invoke(main, [*args[:4], "--search", "optuna", "--trials", "9", "--sort", "loss",
                                       "--dry-run", "--", "python", "train.py"])
    assert optuna.exit_code == 0, optuna.output
    # the cluster file's workers on the celery queue: 1 container x 2 processes, 2 containers x 1
    assert "Optuna search, 9 trials (sampler tpe, seed 0, 4 at a time), chosen as results come" in optuna.output


# --------------------------------------------------------------------------- early stopping


def test_an_intermediate_report_is_a_line_with_a_step_and_the_metric():
    assert intermediate_report("epoch=3 loss=0.25", "loss") == (3, 0.25)
    assert intermediate_report('{"step": 7, "loss": 1.5, "acc": 0.3}', "loss") == (7, 1.5)
    assert intermediate_report("epoch=3 accuracy=0.9", "loss") is None
    assert intermediate_report("loss=0.25", "loss") is None
    assert intermediate_report("epoch=3 loss=nan", "loss") is None
    assert intermediate_report("training epoch 3: loss=0.25", "loss") is None


def test_the_time_pruning_saved_is_the_median_full_run_minus_each_pruned_run():
    assert pruning_saved_seconds([10.0, 12.0, 11.0], [2.0, 3.0]) == pytest.approx(9.0 + 8.0)
    assert pruning_saved_seconds([10.0, 12.0], [13.0]) == 0.0
    assert pruning_saved_seconds([10.0], []) is None and pruning_saved_seconds([], [1.0]) is None


def study_plan(tmp_path, runs=0, pruner="median", search=None, fresh=True, space=None):
    plan = driver_plan(sweep_id="sw", name="demo", runs=runs_of([((("i", i),)) for i in range(1, runs + 1)],
                                                                    ("job",)),
                       queue="celery", retries=0, timeout=None, gpus_per_task=1, cwd="/project",
                       study={"path": str(tmp_path / "sweep-demo" / "study.journal"), "name": "demo", "fresh": fresh,
                              "metric": "loss", "direction": "minimize", "sampler": "tpe", "seed": 0,
                              "pruner": pruner, "space": space or []},
                       search=search)
    return plan


def make_study_driver(plan):
    redis, sender, out = FakeRedis(), FakeSender(), Lines()
    return Driver(plan, redis, sender, Output(out), SIGNING_KEY.encode(), new_nonce=lambda: "n"), redis, sender, out


def test_the_driver_prunes_a_run_whose_curve_falls_behind_and_records_the_trial_as_pruned(tmp_path):
    plan = study_plan(tmp_path, runs=7)
    driver, redis, sender, out = make_study_driver(plan)
    channel = RedisChannel(redis, "sw")
    # Five runs converge to 0.1 * i, the sixth is the best (never pruned), the seventh is behind from its start.
    loss = {**{f"i{i}": 0.1 * i for i in range(1, 6)}, "i6": 0.05}

    def work():
        if pending:  # a run's end comes at the pop after its lines: by then the driver has seen them
            submission, base, target = pending.pop(0)
            pruned = redis.values.get(protocol.stop_key("sw", submission)) is not None
            status = protocol.PRUNED if pruned else protocol.OK
            if not pruned:
                channel.push([{**base, "event": "lines", "lines": [json.dumps({"loss": target})]}])
            channel.finish(submission, {**base, "event": "end", "status": status, "exit_code": 0,
                                        "seconds": 3.0, "host": "h1"})
            return
        for submission, message, _ in list(sender.sent):
            if submission in started:
                continue
            started.add(submission)
            base = {"run": message["run"], "submission": submission}
            index = message["argv"][-1]
            target = loss.get(f"i{index}", 5.0)
            events = [{**base, "event": "start", "host": "h1", "worker": "w@h1", "gpus": ""}]
            events += [{**base, "event": "lines", "lines": [f"epoch={step} loss={target + 1 / step}"]}
                       for step in (1, 2, 3)]
            channel.push(events)
            pending.append((submission, base, target))
            return

    started: set[str] = set()
    pending: list = []
    redis.on_pop = work
    assert driver.run() == 0
    events = out.events()
    pruning = [e for e in events if e["event"] == "pruning"]
    last = plan["runs"][6]["run"]
    assert [(e["run"], e["step"]) for e in pruning] == [(last, 1)]
    assert redis.values[protocol.stop_key("sw", f"sw.{last}.1.n")] == "1"
    assert [e["status"] for e in events if e["event"] == "end"] == ["ok"] * 6 + ["pruned"]
    states = [t.state.name for t in driver.book.study.trials]
    assert states == ["COMPLETE"] * 6 + ["PRUNED"]
    assert driver.book.study.best_value == pytest.approx(0.05)


def test_an_optuna_search_keeps_its_runs_in_flight_and_a_second_driver_continues_the_study(tmp_path):
    space = parse_space("x: {uniform: [-2.0, 2.0]}\nmode: {choice: [a, b]}\nfixed: 3\n").to_plan()

    def sweep(trials):
        plan = study_plan(tmp_path, pruner="none", fresh=False, space=space,
                          search={"kind": "optuna", "trials": trials, "command": ["python", "f.py"], "in_flight": 2})
        driver, redis, sender, out = make_study_driver(plan)
        channel = RedisChannel(redis, "sw")
        out_at_once: list[int] = []

        def work():
            waiting = [(s, m) for s, m, _ in sender.sent if not redis.sismember(protocol.done_key("sw"), s)]
            out_at_once.append(len(waiting))
            if waiting:
                submission, message = waiting[0]
                x = float(message["argv"][message["argv"].index("--x") + 1])
                base = {"run": message["run"], "submission": submission}
                channel.push([{**base, "event": "start", "host": "h1", "worker": "w@h1", "gpus": ""},
                              {**base, "event": "lines", "lines": [json.dumps({"loss": (x - 1) ** 2})]}])
                channel.finish(submission, {**base, "event": "end", "status": "ok", "exit_code": 0,
                                            "seconds": 1.0, "host": "h1"})
        redis.on_pop = work
        assert driver.run() == 0
        return driver, sender, out, out_at_once

    driver, sender, out, out_at_once = sweep(5)
    trials = [e for e in out.events() if e["event"] == "trial"]
    assert [e["index"] for e in trials] == [1, 2, 3, 4, 5] and max(out_at_once) == 2
    assert [name for name, _ in trials[0]["params"]] == ["x", "mode", "fixed"]
    argv = trials[0]["argv"]
    assert argv[:3] == ["python", "f.py", "--x"] and argv[4] == "--mode" and argv[6:] == ["--fixed", "3"]
    assert len({e["run"] for e in trials}) == 5
    assert [m["argv"] for _, m, _ in sender.sent] == [e["argv"] for e in trials]
    assert len(driver.book.study.trials) == 5

    again, _, out, _ = sweep(8)  # --resume with a larger budget: three more, numbered on
    assert [e for e in out.events() if e["event"] == "study"] == [{"event": "study", "done": 5, "to_run": 3}]
    assert [e["index"] for e in out.events() if e["event"] == "trial"] == [6, 7, 8]
    assert [t.state.name for t in again.book.study.trials] == ["COMPLETE"] * 8


def test_a_fresh_search_keeps_the_earlier_study_aside(tmp_path):
    plan = study_plan(tmp_path, runs=1, pruner="none")
    journal = tmp_path / "sweep-demo" / "study.journal"
    journal.parent.mkdir()
    journal.write_text("earlier\n")
    driver, redis, sender, out = make_study_driver(plan)
    driver._open_study()
    assert (tmp_path / "sweep-demo" / "study.previous.journal").read_text() == "earlier\n"
    assert len(driver.book.study.trials) == 0


# --------------------------------------------------------------------------- the runner's side


def test_a_run_whose_stop_flag_is_set_stops_before_its_next_line_and_ends_pruned(tmp_path):
    script = ("import time\n"
              "for epoch in range(1, 40):\n"
              "    print(f'epoch={epoch} loss={1 / epoch}', flush=True)\n"
              "    time.sleep(0.3)\n")
    channel = FakeChannel()
    original_push = channel.push

    def push(events):
        original_push(events)
        if any("epoch=2 " in line for e in events if e["event"] == "lines" for line in e["lines"]):
            channel.pruned.add("s1.r1.1")  # the driver's decision, on the line of epoch 2

    channel.push = push
    end, channel = run([sys.executable, "-c", script], channel, tmp_path)
    assert end["status"] == protocol.PRUNED
    epochs = [int(line.split()[0].split("=")[1]) for line in channel.lines() if line.startswith("epoch=")]
    assert epochs[-1] <= 3  # within one reporting step of the decision
    assert channel.lines()[-1] == "infra: stopped early: the sweep's pruner gave up on this run"
    assert end["seconds"] < 2.0


def test_the_redis_channel_reads_the_stop_flag_of_its_own_submission_only():
    redis = FakeRedis()
    channel = RedisChannel(redis, "sw")
    redis.set(protocol.alive_key("sw"), "1")
    assert channel.stop_reason("sw.a.1") is None
    redis.set(protocol.stop_key("sw", "sw.b.1"), "1")
    assert channel.stop_reason("sw.a.1") is None and channel.stop_reason("sw.b.1") == protocol.PRUNED
    redis.set(protocol.cancel_key("sw"), "1")
    assert channel.stop_reason("sw.a.1") == protocol.CANCELLED


# --------------------------------------------------------------------------- the recorder


def test_an_optuna_searchs_trials_become_rows_pruned_runs_keep_their_last_metrics_and_the_saving_is_said(tmp_path):
    from infra.config import parse_cluster
    from infra.sweep.results import SortSpec
    from infra.workflows.sweep import SweepOptions, SweepRecorder, prepare_sweep, summary_lines

    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "train.py").write_text("print(1)\n")
    (tmp_path / "space.yml").write_text("x: {uniform: [0.0, 1.0]}\n")
    cluster = parse_cluster(CLUSTER, filename="cluster.yaml", base_dir=tmp_path)
    options = SweepOptions(sort=SortSpec("loss", False), search=SearchOptions("optuna", trials=3, pruner="median"))
    plan = prepare_sweep(cluster, tmp_path / "space.yml", ("python", "train.py"), options)
    assert plan.runs == [] and plan.total == 3
    out, notes = [], []
    recorder = SweepRecorder(plan, out=out.append, note=notes.append)

    def say(kind, **fields):
        recorder.on_driver_stdout(protocol.event_line({"event": kind, **fields}))

    say("study", done=0, to_run=3)
    for index, (x, seconds, status) in enumerate([(0.5, 10.0, "ok"), (0.9, 2.0, "pruned"), (0.1, 12.0, "ok")], 1):
        run = f"r{index}"
        say("trial", run=run, index=index, params=[["x", x]], argv=["python", "train.py", "--x", repr(x)])
        say("start", run=run, host="m1", worker="w@m1", gpus="", attempt=1)
        say("lines", run=run, lines=[f"epoch=1 loss={x}", f"epoch=2 loss={x / 2}"])
        if status == "pruned":
            say("pruning", run=run, step=2)
        else:
            say("lines", run=run, lines=[json.dumps({"loss": x / 4, "epoch": 3})])
        say("end", run=run, status=status, exit_code=0 if status == "ok" else -15, seconds=seconds, host="m1",
            attempt=1, final=True)
    summary = recorder.close(options.sort, 5)
    assert "[2/3] pruning at step 2" in out and "[2/3] pruned (exit -15, 2.0 s on m1): see " + \
        "output/sweep-space/logs/0002-r2.log" in out
    rows = list(__import__("csv").DictReader(plan.csv_path.open()))
    assert [(r["index"], r["x"], r["status"], r["epoch"], r["loss"]) for r in rows] == [
        ("1", "0.5", "ok", "3", "0.125"), ("2", "0.9", "pruned", "2", "0.45"), ("3", "0.1", "ok", "3", "0.025")]
    assert (summary.ok, summary.pruned, summary.failed, summary.exit_code) == (2, 1, 0, 0)
    assert summary.pruning_saved == pytest.approx(11.0 - 2.0)
    lines = summary_lines(plan, summary)
    assert lines[0].startswith("sweep 'space': 3 run(s): 2 ok, 1 pruned in ")
    assert lines[1] == ("early stopping saved about 0:09 of run time (9.0 s: for each of the 1 pruned run(s), "
                        "the median time of the runs that ran to the end minus its own)")
    assert "# pruned at step 2" in (tmp_path / "proj" / rows[1]["log"]).read_text()


@pytest.mark.parametrize("pruner", ["halving", "hyperband"])
def test_the_other_pruners_decide_on_the_same_reports_and_every_trial_ends_told(tmp_path, pruner):
    from infra.runtime.study import StudyBook

    book = StudyBook.open({"path": str(tmp_path / "study.journal"), "name": "demo", "fresh": True, "metric": "loss",
                           "direction": "minimize", "pruner": pruner})
    decided = {}
    for index in range(12):
        run = f"r{index}"
        book.begin(run)
        target = 5.0 if index % 3 == 2 else 0.1 * index  # every third run far behind
        step = None
        for epoch in range(1, 10):
            step = book.feed(run, [f"epoch={epoch} loss={target + 1 / epoch}"])
            if step is not None:
                break
        decided[run] = step
        if step is None:
            book.feed(run, [json.dumps({"loss": target})])
        book.end(run, "pruned" if step is not None else "ok")
    states = [trial.state.name for trial in book.study.trials]
    assert len(states) == 12 and set(states) <= {"COMPLETE", "PRUNED"}
    assert "PRUNED" in states  # the runs far behind are given up...
    assert decided["r0"] is None and decided["r1"] is None  # ...the best ones never


def test_an_unknown_pruner_or_sampler_is_refused_by_name():
    from infra.runtime.study import make_pruner, make_sampler

    with pytest.raises(ValueError, match="unknown pruner 'sometimes'"):
        make_pruner("sometimes")
    with pytest.raises(ValueError, match="unknown sampler 'grid'"):
        make_sampler("grid", 0)
