"""Runs of a sweep: command lines as word lists (hostile values stay one word), ids, resume, the driver's plan."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from infra.errors import ConfigError
from infra.runtime.protocol import PLAN_FORMAT
from infra.sweep.parameters import parse_parameters
from infra.sweep.plan import (
    build_runs,
    check_command,
    check_name,
    check_queue,
    default_name,
    driver_plan,
    run_id,
    select_runs,
)

HOSTILE = [
    "a b", "it's", 'say "hi"', "; rm -rf /tmp/pwned", "$(touch /tmp/pwned)", "`touch /tmp/pwned`",
    "a && b", "x | y", "line1\nline2", "--help", "-1", "ünïcödé ✓", "*", "~", "$HOME", "a=b", "",
]


def test_hostile_values_reach_the_command_as_one_word_each_and_run_without_a_shell(tmp_path):
    text = "v: " + json.dumps(HOSTILE) + "\n"  # JSON is YAML: every value exactly as written
    runs = build_runs(parse_parameters(text), (sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"))
    assert [run.argv[-2:] for run in runs] == [("--v", value) for value in HOSTILE]
    for run in runs:
        assert shlex.split(shlex.join(run.argv)) == list(run.argv)  # the dry run shows what runs
        done = subprocess.run(list(run.argv), capture_output=True, text=True, check=True, cwd=tmp_path)
        assert json.loads(done.stdout) == list(run.argv[3:])
    assert list(tmp_path.iterdir()) == []
    assert not Path("/tmp/pwned").exists()


def test_a_runs_id_is_its_command_line_and_its_index_its_position():
    runs = build_runs(parse_parameters("lr: [0.1, 0.2]\nflag: [true, false]\n"), ("python", "train.py"))
    assert [run.index for run in runs] == [1, 2, 3, 4]
    assert runs[0].argv == ("python", "train.py", "--lr", "0.1", "--flag")
    assert runs[0].id == run_id(runs[0].argv) and len(runs[0].id) == 12
    assert len({run.id for run in runs}) == 4
    assert runs[0].label() == "lr=0.1 flag" and runs[1].label() == "lr=0.1"
    # The same combination has the same id in a reordered file; another command changes it.
    reordered = build_runs(parse_parameters("lr: [0.2, 0.1]\nflag: [true, false]\n"), ("python", "train.py"))
    assert {r.id for r in reordered} == {r.id for r in runs}
    other = build_runs(parse_parameters("lr: [0.1, 0.2]\nflag: [true, false]\n"), ("python", "train.py", "--data", "x"))
    assert not {r.id for r in other} & {r.id for r in runs}


def test_resume_runs_what_did_not_finish_ok_and_only_that():
    runs = build_runs(parse_parameters("i: !!python/tuple [0, 6]\n"), ("work",))
    previous = {runs[0].id: "ok", runs[1].id: "failed", runs[2].id: "timeout", runs[3].id: "cancelled",
                runs[4].id: "ok", "gone-from-the-grid": "ok"}
    chosen = select_runs(runs, previous, resume=True)
    assert [r.index for r in chosen.done] == [1, 5]
    assert [r.index for r in chosen.to_run] == [2, 3, 4, 6]
    assert [r.index for r in select_runs(runs, previous, resume=False).to_run] == [1, 2, 3, 4, 5, 6]


def test_the_command_is_checked_before_anything_runs(tmp_path):
    (tmp_path / "train.py").write_text("")
    assert check_command(("python", "train.py", "--data", "x.csv"), tmp_path) == ("python", "train.py", "--data", "x.csv")
    assert check_command(("python", "-u", "train.py"), tmp_path)
    assert check_command(("python", "-c", "print(1)"), tmp_path)
    assert check_command(("./run.sh", "x"), tmp_path)  # not a python file: the workers will say
    with pytest.raises(ConfigError, match=r"^sweep: name the command after the parameters file"):
        check_command((), tmp_path)
    with pytest.raises(ConfigError, match=r"^sweep: no file trian.py in the project folder"):
        check_command(("python3", "trian.py"), tmp_path)
    with pytest.raises(ConfigError, match=r"is not inside the project folder"):
        check_command(("python", "../elsewhere.py"), tmp_path)
    with pytest.raises(ConfigError, match=r"NUL"):
        check_command(("python", "a\0b"), tmp_path)


def test_names_and_queues():
    assert default_name("experiments/params v2.yml") == "params-v2"
    assert default_name("parameters.yml") == "parameters"
    assert check_name("lr-sweep_2.a") == "lr-sweep_2.a"
    with pytest.raises(ConfigError, match=r"--name '../x' must be"):
        check_name("../x")
    assert check_queue(None, ["celery", "gpu"]) == "celery"
    assert check_queue(None, ["gpu", "io"]) == "gpu"
    assert check_queue("io", ["gpu", "io"]) == "io"
    with pytest.raises(ConfigError, match=r"^sweep: --queue 'cpu': no worker consumes it \(queues: gpu, io\)$"):
        check_queue("cpu", ["gpu", "io"])


def test_the_driver_gets_every_run_with_its_argv_and_the_sweeps_settings():
    runs = build_runs(parse_parameters("i: [1, 2]\n"), ("python", "job.py"))
    plan = driver_plan(sweep_id="abc", name="demo", runs=runs, queue="celery", retries=2, timeout=30.0,
                       gpus_per_task=1, cwd="/project")
    assert plan == {
        "format": PLAN_FORMAT, "sweep_id": "abc", "name": "demo", "queue": "celery", "retries": 2,
        "message": {"cwd": "/project", "timeout": 30.0, "gpus_per_task": 1, "env": {"INFRA_SWEEP": "demo"}},
        "runs": [{"run": runs[0].id, "argv": ["python", "job.py", "--i", "1"]},
                 {"run": runs[1].id, "argv": ["python", "job.py", "--i", "2"]}],
    }
    assert json.loads(json.dumps(plan)) == plan
