"""Results of a sweep: metrics read from output, CSV rows that read back, the best rows, progress."""

from __future__ import annotations

import csv
import io

import pytest

from infra.sweep.parameters import parse_parameters
from infra.sweep.plan import build_runs
from infra.sweep.results import (
    MetricsReader,
    Outcome,
    SortSpec,
    best_rows,
    columns_of,
    csv_text,
    eta_seconds,
    format_duration,
    metric_text,
    outcome_row,
    progress_line,
    read_csv_rows,
    table_lines,
)


# --------------------------------------------------------------------------- metrics


def metrics_of(lines: list[str]) -> dict:
    reader = MetricsReader()
    for line in lines:
        reader.feed(line)
    return reader.metrics


def test_the_last_json_object_line_is_the_metrics():
    assert metrics_of([
        "epoch=1 loss=0.9",
        '{"accuracy": 0.5}',
        "some text {not json}",
        '  {"accuracy": 0.91, "loss": 0.3, "layers": [64, 32]}  ',
        "done",
    ]) == {"accuracy": 0.91, "loss": 0.3, "layers": [64, 32]}


def test_without_a_json_line_key_value_lines_are_the_metrics_later_ones_winning():
    assert metrics_of([
        "training on 1000 samples",  # not only key=value words: ignored
        "epoch=1 loss=0.9",
        "epoch=2, loss=0.41, note=good",
        "Epoch 3: loss=0.1",  # prose around it: ignored
        "PATH=/usr/bin",
    ]) == {"epoch": 2, "loss": 0.41, "note": "good", "PATH": "/usr/bin"}


def test_json_that_is_not_an_object_is_not_metrics():
    assert metrics_of(["[1, 2]", '"text"', "{broken", "{}"]) == {}
    reader = MetricsReader()
    reader.feed('{"a": 1}')
    reader.feed("a=2")
    assert reader.metrics == {"a": 1}  # a JSON object line wins over key=value lines


def test_metric_cells():
    assert [metric_text(v) for v in (0.1, 3, "x", True, None, {"b": 1, "a": [1]})] == [
        "0.1", "3", "x", "true", "", '{"a": [1], "b": 1}']


# --------------------------------------------------------------------------- rows


@pytest.fixture
def runs():
    return build_runs(parse_parameters("lr: [0.1, 0.01]\nshuffle: [true, false]\nstatus: x\n"), ("python", "t.py"))


def test_a_row_holds_parameters_outcome_metrics_and_log_and_clashing_names_are_prefixed(runs):
    outcome = Outcome("ok", 0, 1.23456, "h2", 1, {"accuracy": 0.9, "lr": 5, "log": "x"}, "output/sweep-a/logs/1.log")
    row = outcome_row(runs[0], outcome)
    assert row == {
        "index": "1", "id": runs[0].id, "lr": "0.1", "shuffle": "true", "param:status": "x",
        "status": "ok", "exit_code": "0", "seconds": "1.235", "host": "h2", "attempts": "1",
        "accuracy": "0.9", "metric:lr": "5", "metric:log": "x", "log": "output/sweep-a/logs/1.log",
    }


def test_the_csv_has_fixed_columns_then_metrics_in_first_seen_order_and_reads_back(runs):
    rows = [
        outcome_row(runs[0], Outcome("ok", 0, 1.0, "h1", 1, {"loss": 0.5, "accuracy": 0.8}, "l1")),
        outcome_row(runs[1], Outcome("failed", 3, 0.5, "h2", 2, {}, "l2")),
        outcome_row(runs[2], Outcome("ok", 0, 2.0, "h3", 1, {"accuracy": 0.9, "f1": 0.7}, "l3")),
    ]
    columns = columns_of(["lr", "shuffle", "status"], rows)
    assert columns == ["index", "id", "lr", "shuffle", "param:status", "status", "exit_code", "seconds", "host",
                       "attempts", "loss", "accuracy", "f1", "log"]
    text = csv_text(columns, rows)
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == columns and len(table) == 4
    assert table[2][columns.index("loss")] == "" and table[2][columns.index("status")] == "failed"
    assert read_csv_rows(text) == [{column: row.get(column, "") for column in columns} for row in rows]


def test_values_with_commas_quotes_and_newlines_survive_the_csv():
    runs = build_runs(parse_parameters('v: ["a,b", "say \\"hi\\"", "two\\nlines"]\n'), ("x",))
    rows = [outcome_row(run, Outcome("ok", 0, 1.0, "h", 1, {"note": run.params[0][1]}, "l")) for run in runs]
    back = read_csv_rows(csv_text(columns_of(["v"], rows), rows))
    assert [row["v"] for row in back] == ["a,b", 'say "hi"', "two\nlines"]
    assert [row["note"] for row in back] == ["a,b", 'say "hi"', "two\nlines"]


def test_rows_without_an_id_are_not_read_back():
    assert read_csv_rows("index,id,status\n1,,ok\n2,abc,ok\n") == [{"index": "2", "id": "abc", "status": "ok"}]


# --------------------------------------------------------------------------- the best rows


def test_sort_specs():
    assert SortSpec.parse("-accuracy") == SortSpec("accuracy", True)
    assert SortSpec.parse("+loss") == SortSpec("loss", False)
    assert SortSpec.parse("loss").describe() == "loss (lowest first)"
    with pytest.raises(ValueError, match="--sort needs a metric name"):
        SortSpec.parse("-")


def rows_of(*specs):
    return [{"index": str(i), "id": f"r{i}", "status": status, "accuracy": acc, "lr": str(i)}
            for i, (status, acc) in enumerate(specs, start=1)]


def test_the_best_rows_are_finished_ok_rows_with_a_numeric_metric_best_first_ties_in_grid_order():
    rows = rows_of(("ok", "0.8"), ("ok", "0.9"), ("failed", "0.99"), ("ok", ""), ("ok", "nan"), ("ok", "0.9"),
                   ("ok", "text"), ("ok", "0.7"))
    columns = ["index", "id", "lr", "status", "accuracy"]
    best = best_rows(rows, SortSpec("accuracy", True), columns, top=3)
    assert [row["index"] for row in best] == ["2", "6", "1"]
    worst_first = best_rows(rows, SortSpec("accuracy", False), columns, top=10)
    assert [row["index"] for row in worst_first] == ["8", "1", "2", "6"]
    assert best_rows(rows, SortSpec("f1", True), columns, top=3) == []


def test_a_metric_clashing_with_a_parameter_is_sorted_by_its_metric_column():
    rows = [{"index": "1", "lr": "0.1", "metric:lr": "5", "status": "ok"},
            {"index": "2", "lr": "0.2", "metric:lr": "7", "status": "ok"}]
    columns = ["index", "lr", "status", "metric:lr"]
    assert [r["index"] for r in best_rows(rows, SortSpec("lr", True), columns, 2)] == ["2", "1"]


def test_the_table_shows_parameters_then_the_sort_metric_first():
    rows = [{"index": "12", "id": "x", "lr": "0.1", "status": "ok", "seconds": "1.500", "host": "h2",
             "loss": "0.3", "accuracy": "0.91", "log": "l"},
            {"index": "3", "id": "y", "lr": "0.01", "status": "ok", "seconds": "2.000", "host": "h3",
             "loss": "0.4", "accuracy": "0.85", "log": "l"}]
    columns = ["index", "id", "lr", "status", "exit_code", "seconds", "host", "attempts", "loss", "accuracy", "log"]
    assert table_lines(rows, columns, ["lr"], "accuracy") == [
        " #  lr    accuracy  loss  seconds  host",
        "12  0.1   0.91      0.3   1.500    h2",
        " 3  0.01  0.85      0.4   2.000    h3",
    ]


# --------------------------------------------------------------------------- progress


def test_progress_and_eta():
    assert format_duration(5) == "0:05" and format_duration(3725) == "1:02:05"
    assert eta_seconds(0, 10, 5.0) is None and eta_seconds(10, 10, 5.0) is None
    assert eta_seconds(4, 10, 20.0) == 30.0
    assert progress_line(finished=6, running=2, failed=1, total=24, elapsed=30.0, width=12) == (
        "[###.........] 6/24 done, 2 running, 1 failed, 0:30 elapsed, ETA 1:30")
    assert progress_line(finished=24, running=0, failed=0, total=24, elapsed=90.0, width=4) == (
        "[####] 24/24 done, 0 running, 0 failed, 1:30 elapsed")
