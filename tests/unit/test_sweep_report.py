"""The sweep report's data: which columns are parameters and metrics, the best runs, the figures'
numbers, learning curves from logs (pruned runs marked), and one-line errors for bad results."""

from __future__ import annotations

import os
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from infra.cli import main
from infra.errors import ConfigError
from infra.sweep.report import (
    MAX_POINTS_PER_RUN,
    PRUNED_COLOUR,
    ReportInputError,
    build_report,
    choose_objective,
    ranked_rows,
    read_curve,
    read_results_csv,
)
from infra.sweep.results import SortSpec
from infra.workflows.sweep_report import ReportRefresher, find_sweep, read_curves, write_report

# A sweep of two parameters (one numeric, one a flag) with every kind of end, and a metric
# named like a column (`metric:seconds`).
CSV = """\
index,id,lr,shuffle,status,exit_code,seconds,host,attempts,accuracy,loss,metric:seconds,log
1,a1,0.3,true,ok,0,2.0,h1,1,0.81,0.45,1.5,output/sweep-demo/logs/0001-a1.log
2,b2,0.1,true,ok,0,3.0,h2,1,0.93,0.21,2.5,output/sweep-demo/logs/0002-b2.log
3,c3,0.03,false,pruned,,1.0,h1,1,0.55,0.70,0.5,output/sweep-demo/logs/0003-c3.log
4,d4,0.01,false,failed,1,0.5,h2,1,,,,output/sweep-demo/logs/0004-d4.log
5,e5,0.1,false,ok,0,4.0,h1,2,0.93,0.25,3.5,output/sweep-demo/logs/0005-e5.log
"""


def curve_lines(losses, *, end="ok", header=True):
    lines = ["# infra sweep demo: combination 1 of 5", "# attempt 1 on h1"] if header else []
    lines += [f"epoch={i} loss={loss} val_loss={loss + 0.05}" for i, loss in enumerate(losses, start=1)]
    lines += ["some text a run prints", f"# end: {end}, exit code 0, 1.0 s on h1"]
    return lines


def demo_curves():
    return {"a1": read_curve(curve_lines([0.9, 0.6, 0.45])), "b2": read_curve(curve_lines([0.8, 0.4, 0.21])),
            "c3": read_curve(curve_lines([0.9, 0.85], end="pruned")), "e5": read_curve(curve_lines([0.7, 0.25]))}


def figure(report, key):
    found = [f for f in report.figures if f.key == key]
    assert found, f"no figure {key!r} in {[f.key for f in report.figures]}"
    return found[0].spec


# --------------------------------------------------------------------------- the CSV


def test_the_parameters_are_the_columns_between_id_and_status_and_metrics_those_after_the_fixed_ones():
    table = read_results_csv(CSV)
    assert table.params == ["lr", "shuffle"]
    assert table.metrics == ["accuracy", "loss", "metric:seconds"]
    assert [table.status(row) for row in table.rows] == ["ok", "ok", "pruned", "failed", "ok"]


@pytest.mark.parametrize("text, message", [
    ("", "the results CSV is empty"),
    ("\n\n", "the results CSV is empty"),
    ("a,b\n1,2\n", "no 'id' or 'status' column"),
    ("index,id,lr,status\n", "no runs yet"),
    ("index,status,lr,id\n1,ok,0.1,x\n", "'status' column comes before 'id'"),
    ('index,id,status\n1,"x"y,ok\n', "malformed"),
])
def test_results_a_report_cannot_be_made_from_are_one_line_errors(text, message):
    with pytest.raises(ReportInputError, match=message) as caught:
        read_results_csv(text)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- the best runs


def test_without_sort_the_first_metric_that_names_its_direction_is_the_objective():
    assert choose_objective(read_results_csv(CSV)).describe() == "accuracy (highest is best)"
    swapped = CSV.replace("accuracy,loss", "loss,accuracy")
    objective = choose_objective(read_results_csv(swapped))
    assert (objective.column, objective.maximize) == ("loss", False)


def test_a_metric_of_time_is_not_taken_for_the_objective_and_a_bare_metric_is_minimised():
    table = read_results_csv("index,id,x,status,seconds,train_seconds,score2,zeta,log\n"
                             "1,a,1,ok,1,9,3,4,l\n")
    objective = choose_objective(table)
    assert objective.column == "score2" and objective.maximize
    table = read_results_csv("index,id,x,status,seconds,train_seconds,zeta,log\n1,a,1,ok,1,9,4,l\n")
    assert (choose_objective(table).column, choose_objective(table).maximize) == ("zeta", False)


def test_the_best_runs_are_ok_runs_only_best_first_ties_in_grid_order():
    table = read_results_csv(CSV)
    best = ranked_rows(table, choose_objective(table))
    assert [row["index"] for row in best] == ["2", "5", "1"]  # 0.93 (#2, then #5), 0.81; pruned and failed out
    by_loss = ranked_rows(table, choose_objective(table, SortSpec.parse("loss")))
    assert [row["index"] for row in by_loss] == ["2", "5", "1"]
    by_seconds = ranked_rows(table, choose_objective(table, SortSpec.parse("-seconds")))
    assert [row["metric:seconds"] for row in by_seconds] == ["3.5", "2.5", "1.5"]  # the metric, not the column


def test_sorting_by_a_metric_the_results_lack_names_the_ones_they_have():
    with pytest.raises(ReportInputError, match=r"no metric 'f1' in the results \(metrics: accuracy, loss, seconds\)"):
        build_report("demo", read_results_csv(CSV), sort=SortSpec.parse("-f1"))


def test_the_summary_counts_each_status_and_names_the_best_run_and_its_parameters():
    report = build_report("demo", read_results_csv(CSV), demo_curves())
    assert report.summary_line() == ("5 runs: 3 ok, 1 failed, 1 pruned; best accuracy 0.93 "
                                     "(run #2: lr=0.1 shuffle=true)")
    assert report.table_header == ["#", "lr", "shuffle", "accuracy", "loss", "seconds", "seconds", "host"]
    assert [cells[0] for cells in report.table_rows] == ["2", "5", "1"]


def test_a_sweep_without_numeric_metrics_still_has_a_report_that_says_so():
    table = read_results_csv("index,id,lr,status,exit_code,seconds,host,attempts,log\n"
                             "1,a,0.1,failed,1,0.2,h1,1,l\n")
    report = build_report("demo", table)
    assert report.summary_line() == "1 run: 1 failed; no numeric metric to rank the runs by"
    assert [f.key for f in report.figures] == ["hosts"]
    assert any("no intermediate metrics" in note for note in report.notes)


# --------------------------------------------------------------------------- the figures


def test_the_parallel_coordinates_hold_each_ok_run_on_every_parameter_and_the_metric():
    spec = figure(build_report("demo", read_results_csv(CSV)), "parallel")
    lr, shuffle, accuracy = spec["data"][0]["dimensions"]
    assert lr == {"label": "lr", "values": [0.3, 0.1, 0.1]}  # runs 1, 2, 5 in grid order
    assert shuffle["ticktext"] == ["true", "false"] and shuffle["values"] == [0, 0, 1]
    assert accuracy["values"] == [0.81, 0.93, 0.93]
    assert spec["data"][0]["line"]["reversescale"] is False  # highest is best: the bright end


def test_the_metric_against_each_parameter_marks_the_best_run():
    report = build_report("demo", read_results_csv(CSV))
    spec = figure(report, "param-lr")
    trace = spec["data"][0]
    assert (trace["x"], trace["y"]) == ([0.3, 0.1, 0.1], [0.81, 0.93, 0.93])
    assert trace["marker"]["symbol"] == ["circle", "star", "circle"]
    assert figure(report, "param-shuffle")["layout"]["xaxis"]["categoryarray"] == ["true", "false"]


def test_a_parameter_spanning_decades_gets_a_log_axis():
    rows = "".join(f"{i},r{i},{lr},ok,0,1,h,1,{i / 10},l\n" for i, lr in enumerate(["1e-4", "1e-3", "1e-2"], 1))
    table = read_results_csv("index,id,lr,status,exit_code,seconds,host,attempts,accuracy,log\n" + rows)
    assert figure(build_report("d", table), "param-lr")["layout"]["xaxis"]["type"] == "log"


def test_learning_curves_come_from_the_logs_with_pruned_runs_dotted_and_crossed_where_they_stopped():
    report = build_report("demo", read_results_csv(CSV), demo_curves())
    assert [f.key for f in report.figures if f.key.startswith("curve-")] == ["curve-loss", "curve-val_loss"]
    spec = figure(report, "curve-loss")
    traces = {trace["name"]: trace for trace in spec["data"]}
    assert list(traces) == ["#1", "#2 (best)", "#3 pruned", "#5"]
    pruned = traces["#3 pruned"]
    assert (pruned["x"], pruned["y"]) == ([1.0, 2.0], [0.9, 0.85])
    assert pruned["line"]["dash"] == "dot" and pruned["line"]["color"] == PRUNED_COLOUR
    assert pruned["marker"]["symbol"][-1] == "x"
    assert "dash" not in traces["#2 (best)"]["line"] and traces["#2 (best)"]["line"]["width"] == 4
    assert spec["layout"]["xaxis"]["title"]["text"] == "epoch"
    note = [f.note for f in report.figures if f.key == "curve-loss"][0]
    assert note == "4 runs, 1 pruned (dotted, ✕ where they stopped)"


def test_a_run_the_log_says_was_pruned_is_marked_even_when_the_csv_does_not_say_it():
    curves = demo_curves()
    curves["a1"] = read_curve(curve_lines([0.9, 0.8], end="pruned"))
    names = [t["name"] for t in figure(build_report("demo", read_results_csv(CSV), curves), "curve-loss")["data"]]
    assert names[0] == "#1 pruned"


def test_curve_points_come_from_json_lines_and_key_value_lines_with_a_step():
    curve = read_curve(['{"step": 10, "reward": 1.5, "phase": "warmup"}', "step=20 reward=2.5",
                        "reward=9 no step here", '{"reward": 3}', "epoch=3 loss=nan", "step=30 reward=inf"])
    assert curve.step_key == "step"
    assert curve.steps == [10.0, 20.0] and curve.values == [{"reward": 1.5}, {"reward": 2.5}]


def test_a_very_long_curve_is_thinned_but_keeps_its_last_point():
    curve = read_curve([f"step={i} loss={1 / (i + 1)}" for i in range(5 * MAX_POINTS_PER_RUN + 3)])
    assert len(curve.steps) <= MAX_POINTS_PER_RUN + 1
    assert curve.steps[0] == 0 and curve.steps[-1] == 5 * MAX_POINTS_PER_RUN + 2


def test_run_time_per_host_is_a_box_of_each_hosts_runs():
    spec = figure(build_report("demo", read_results_csv(CSV)), "hosts")
    assert [(trace["name"], trace["y"]) for trace in spec["data"]] == [("h1 (3)", [2.0, 1.0, 4.0]),
                                                                      ("h2 (2)", [3.0, 0.5])]


def test_any_status_word_is_counted_and_listed_after_the_known_ones():
    text = CSV.replace("4,d4,0.01,false,failed", "4,d4,0.01,false,lost")
    assert build_report("demo", read_results_csv(text)).counts == {"ok": 3, "pruned": 1, "lost": 1}


# --------------------------------------------------------------------------- files


def external_sources(page: str) -> list[str]:
    """The src/href of every tag of the page (plotly.js's own text is a script's content, not a tag)."""
    found: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(value for name, value in attrs if name in ("src", "href") and value)

    Tags().feed(page)
    return found


@pytest.fixture
def sweep_folder(tmp_path):
    output = tmp_path / "output"
    logs = output / "sweep-demo" / "logs"
    logs.mkdir(parents=True)
    (output / "sweep-demo.csv").write_text(CSV)
    for run_id, losses, end in (("0001-a1", [0.9, 0.45], "ok"), ("0002-b2", [0.8, 0.21], "ok"),
                                ("0003-c3", [0.9], "pruned")):
        (logs / f"{run_id}.log").write_text("\n".join(curve_lines(losses, end=end)) + "\n")
    return output


def test_a_sweep_is_found_by_name_folder_or_csv(sweep_folder):
    for target in ("demo", "sweep-demo", str(sweep_folder / "sweep-demo"), str(sweep_folder / "sweep-demo.csv")):
        files = find_sweep(target, [sweep_folder.parent / "elsewhere", sweep_folder])
        assert (files.name, files.csv_path.name, files.folder.name) == ("demo", "sweep-demo.csv", "sweep-demo")


def test_a_sweep_is_found_from_inside_its_folder(sweep_folder, monkeypatch):
    monkeypatch.chdir(sweep_folder / "sweep-demo")
    files = find_sweep(".", [])
    assert (files.name, files.csv_path, files.report_path) == (
        "demo", sweep_folder.resolve() / "sweep-demo.csv", sweep_folder.resolve() / "sweep-demo" / "report.html")


@pytest.mark.parametrize("target, message", [
    ("other", "no sweep 'other': no {out}/sweep-other.csv"),
    ("{out}/sweep-none.csv", "no such sweep results: {out}/sweep-none.csv"),
    ("a b", "'a b' is neither a sweep name nor an existing path"),
])
def test_a_sweep_that_is_not_there_is_one_line_naming_where_it_was_looked_for(sweep_folder, target, message):
    out = str(sweep_folder)
    with pytest.raises(ConfigError) as caught:
        find_sweep(target.format(out=out), [sweep_folder])
    assert str(caught.value) == "sweep report: " + message.format(out=out)


def test_logs_are_read_only_from_the_sweeps_logs_folder_never_through_a_link(sweep_folder, tmp_path):
    secret = tmp_path / "secret.log"
    secret.write_text("epoch=1 loss=0.123456\n")
    logs = sweep_folder / "sweep-demo" / "logs"
    (logs / "0001-a1.log").unlink()
    os.symlink(secret, logs / "0001-a1.log")
    text = CSV.replace("output/sweep-demo/logs/0002-b2.log", str(secret))
    (sweep_folder / "sweep-demo.csv").write_text(text)
    files = find_sweep("demo", [sweep_folder])
    curves = read_curves(files, read_results_csv(text).rows)
    assert set(curves) == {"c3"}  # a1: a link, b2: a file outside (its name is looked for in logs/ only)


def test_write_report_writes_one_page_with_plotly_inside_and_the_sweeps_numbers(sweep_folder):
    path = write_report(find_sweep("demo", [sweep_folder]))
    page = path.read_text()
    assert path == sweep_folder / "sweep-demo" / "report.html"
    assert external_sources(page) == []  # nothing to fetch: plotly.js is in the page
    assert len(page) > 3_000_000
    assert "Plotly.newPlot" in page and page.count('class="plot"') == len(build_report(
        "demo", read_results_csv(CSV), demo_curves()).figures)
    assert "5 runs: 3 ok, 1 failed, 1 pruned; best accuracy 0.93 (run #2: lr=0.1 shuffle=true)" in page
    assert '"name":"#3 pruned"' in page


def test_the_report_command_writes_the_page_and_bad_input_is_one_line_and_exit_2(sweep_folder, monkeypatch):
    monkeypatch.chdir(sweep_folder.parent)
    result = CliRunner().invoke(main, ["sweep", "report", "demo"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("report: output/sweep-demo/report.html (")
    (sweep_folder / "sweep-empty.csv").write_text("")
    for target, message in (("empty", "output/sweep-empty.csv: the results CSV is empty"),
                            ("gone", "no sweep 'gone': no output/sweep-gone.csv")):
        result = CliRunner().invoke(main, ["sweep", "report", target])
        assert (result.exit_code, result.output) == (2, f"error: sweep report: {message}\n")


def test_a_report_that_fails_during_a_sweep_is_one_warning_once_and_the_sweep_goes_on(sweep_folder):
    notes = []
    now = [0.0]
    refresh = ReportRefresher(sweep_folder / "sweep-demo.csv", sort=SortSpec.parse("-f1"), top=10,
                              note=notes.append, every_seconds=30, clock=lambda: now[0])
    assert refresh() is None and notes == []  # not due yet
    now[0] = 31
    assert refresh() is None and refresh(final=True) is None
    assert notes == [f"warning: no report this time: sweep report: {sweep_folder}/sweep-demo.csv: "
                     "no metric 'f1' in the results (metrics: accuracy, loss, seconds)"]
    refresh.sort = None
    assert refresh(final=True) == sweep_folder / "sweep-demo" / "report.html"


def test_a_sweep_writes_its_report_as_results_come_and_names_it_in_the_summary(tmp_path):
    from infra.config import parse_cluster
    from infra.runtime import protocol
    from infra.workflows.sweep import SweepOptions, SweepRecorder, prepare_sweep, summary_lines

    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    (tmp_path / "grid.yml").write_text("lr: [0.1, 0.01]\n")
    cluster = parse_cluster("name: lab\nproject: {path: proj}\nroles:\n  master: {host: local}\n"
                            "  workers: [{host: local}]\n", filename="cluster.yaml", base_dir=tmp_path)
    plan = prepare_sweep(cluster, tmp_path / "grid.yml", ("python", "train.py"), SweepOptions())
    now = [0.0]
    notes = []
    refresh = ReportRefresher(plan.csv_path, sort=None, top=10, note=notes.append, every_seconds=30,
                              clock=lambda: now[0])
    recorder = SweepRecorder(plan, out=lambda line: None, note=notes.append, clock=lambda: now[0],
                             refresh_report=refresh)
    report = plan.output_dir / "sweep-grid" / "report.html"
    for position, run in enumerate(plan.runs, start=1):
        now[0] += 20
        send = recorder.on_driver_stdout
        send(protocol.event_line({"event": "start", "run": run.id, "host": "local", "attempt": 1}))
        send(protocol.event_line({"event": "lines", "run": run.id,
                                  "lines": ["epoch=1 loss=0.9", f'{{"accuracy": 0.{position}}}']}))
        send(protocol.event_line({"event": "end", "run": run.id, "status": "ok", "exit_code": 0, "seconds": 1.0,
                                  "host": "local", "attempt": 1, "final": True}))
        if position == 1:
            assert not report.exists()  # 20 s in: not due yet
    assert report.is_file()  # 40 s in: due
    summary = recorder.close()
    assert "best accuracy 0.2 (run #2: lr=0.01)" in report.read_text()
    assert summary_lines(plan, summary)[0].endswith(
        "results in output/sweep-grid.csv, report output/sweep-grid/report.html")
    assert notes == []


def test_a_parameter_with_one_value_gets_no_plot_and_is_named_in_a_note():
    text = CSV.replace("index,id,lr,shuffle,", "index,id,lr,epochs,shuffle,")
    text = "\n".join(line.replace(",true,", ",25,true,", 1).replace(",false,", ",25,false,", 1) if i else line
                     for i, line in enumerate(text.splitlines()))
    report = build_report("demo", read_results_csv(text))
    assert [f.key for f in report.figures if f.key.startswith("param-")] == ["param-lr", "param-shuffle"]
    assert [d["label"] for d in figure(report, "parallel")["data"][0]["dimensions"]] == ["lr", "shuffle", "accuracy"]
    assert "the same in every run: epochs=25" in report.notes


def test_a_diverging_run_puts_the_learning_curves_on_a_log_axis():
    curves = demo_curves()
    assert "type" not in figure(build_report("demo", read_results_csv(CSV), curves), "curve-loss")["layout"]["yaxis"]
    curves["c3"] = read_curve(curve_lines([0.9, 40.0, 9e9], end="pruned"))
    spec = figure(build_report("demo", read_results_csv(CSV), curves), "curve-loss")
    assert spec["layout"]["yaxis"]["type"] == "log"


# --------------------------------------------------------------------------- the sample


def test_the_train_demo_sample_prints_learning_curves_and_a_diverging_rate_stops_early():
    import json
    import subprocess
    import sys
    from pathlib import Path

    from infra.config import load_cluster
    from infra.sweep.parameters import load_parameters

    repo = Path(__file__).resolve().parents[2]
    project = repo / "projects" / "train-demo"
    assert len(list(load_parameters(project / "parameters.yml").combinations())) == 24
    assert load_cluster(repo / "examples" / "train-local.yaml").project_dir == project

    def run(*args):
        out = subprocess.run([sys.executable, "train.py", *args], cwd=project, capture_output=True, text=True,
                             check=True, timeout=60).stdout.splitlines()
        return read_curve(out), json.loads(out[-1])

    curve, result = run("--lr", "0.03", "--epochs", "6")
    assert (curve.step_key, curve.steps) == ("epoch", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert set(curve.values[0]) == {"loss", "val_loss"}
    assert curve.values[-1]["val_loss"] < curve.values[0]["val_loss"] and result["val_loss"] < 0.2
    curve, result = run("--lr", "0.3", "--epochs", "25")
    assert result["diverged"] and result["val_loss"] is None and result["epochs_run"] < 5


def test_a_sweep_of_many_runs_draws_the_best_runs_curves_first_and_says_how_many_are_left_out():
    rows = "".join(f"{i},r{i},{i},ok,0,1,h1,1,{i / 1000},l\n" for i in range(1, 251))
    table = read_results_csv("index,id,x,status,exit_code,seconds,host,attempts,accuracy,log\n" + rows)
    curves = {f"r{i}": read_curve([f"epoch=1 loss={i}"]) for i in range(1, 251)}
    report = build_report("many", table, curves)
    spec = figure(report, "curve-loss")
    names = [trace["name"] for trace in spec["data"]]
    assert len(names) == 200 and "#250 (best)" in names and "#1" not in names and not spec["layout"]["showlegend"]
    assert [f.note for f in report.figures if f.key == "curve-loss"] == [
        "200 runs (the best first; 50 more runs left out)"]
