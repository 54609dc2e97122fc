"""A run's own folder, $INFRA_RUN_DIR: the placeholder, packing with its limit and without links,
the chunks through Redis to the driver, and the unpacking here confined to runs/<index>/."""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

import pytest

from infra.runtime import artifacts, protocol
from infra.runtime.command import RunRequest, execute
from infra.runtime.driver import Driver, Output
from infra.sweep.artifacts import parse_size, unpack_run_archive
from infra.workflows.sweep import bring_artifacts
from tests.unit.test_sweep_runtime import SIGNING_KEY, FakeChannel, FakeRedis, FakeSender, Lines
from tests.unit.test_sweep_workflow import Captured, cluster, event, prepared  # noqa: F401  (cluster: a fixture)

PY = sys.executable


def members(data: bytes) -> dict[str, bytes | None]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else None) for m in tar}


# --------------------------------------------------------------------------- the placeholder and the limit


def test_run_dir_in_any_word_of_the_command_is_the_runs_folder():
    argv = ("python", "train.py", "--out", "{run_dir}", "--ckpt={run_dir}/model.pt", "--lr", "0.1")
    assert artifacts.with_run_dir(argv, "/tmp/infra-run-x") == (
        "python", "train.py", "--out", "/tmp/infra-run-x", "--ckpt=/tmp/infra-run-x/model.pt", "--lr", "0.1")
    assert artifacts.run_dir_name("sw.r1.2.ab/../c") == "infra-run-sw.r1.2.ab_.._c"


@pytest.mark.parametrize("text, size", [("100MB", 100_000_000), ("500k", 500_000), ("1.5G", 1_500_000_000),
                                        ("2GiB", 2 * 1024**3), ("0", 0), ("4096", 4096), ("10 kB", 10_000)])
def test_artifact_limits_are_read_as_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1MB", "1PB", "MB"])
def test_a_limit_that_is_no_size_is_one_clear_error(text):
    with pytest.raises(ValueError, match=r" is not a size \(write e\.g\. 100MB"):
        parse_size(text)


# --------------------------------------------------------------------------- packing on the worker


def test_packing_takes_files_and_folders_and_never_follows_a_link(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the run folder")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "result.txt").write_text("0.93\n")
    (run / "sub" / "model.bin").write_bytes(b"\x00" * 10)
    os.symlink(secret, run / "leak.txt")
    os.symlink(tmp_path, run / "sub" / "up")
    os.mkfifo(run / "pipe")
    packed = artifacts.pack_run_folder(str(run), 1000)
    assert members(packed.data) == {"result.txt": b"0.93\n", "sub": None, "sub/model.bin": b"\x00" * 10}
    assert b"outside the run folder" not in gzip.decompress(packed.data)
    assert (packed.files, packed.bytes) == (2, 15)
    assert packed.refused == ["leak.txt (a symbolic link)", "pipe (a FIFO)", "sub/up (a symbolic link)"]
    assert packed.left_out == []
    warning = artifacts.warning_text(artifacts.announcement(packed, 1, 1000))
    assert warning == ("3 item(s) not a regular file or folder left out, never read: "
                       "leak.txt (a symbolic link), pipe (a FIFO), sub/up (a symbolic link)")


def test_files_over_the_limit_are_left_out_and_said_so(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a" * 600)
    (tmp_path / "b.txt").write_bytes(b"b" * 600)
    (tmp_path / "c.txt").write_bytes(b"c" * 300)
    packed = artifacts.pack_run_folder(str(tmp_path), 1000)
    assert set(members(packed.data)) == {"a.txt", "c.txt"}  # in name order while they fit
    assert packed.left_out == ["b.txt"] and packed.bytes == 900
    assert artifacts.warning_text(artifacts.announcement(packed, 1, 1000)) == (
        "1 file(s) over the artifact limit of 1 kB left out: b.txt (--artifact-limit raises it)")
    assert artifacts.warning_text(artifacts.announcement(artifacts.pack_run_folder(str(tmp_path), 5000), 1, 5000)) is None


def test_a_run_folder_that_is_itself_a_link_is_not_read(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(OSError):
        artifacts.pack_run_folder(str(tmp_path / "link"), 1000)


class ArtifactChannel(FakeChannel):
    def __init__(self):
        super().__init__()
        self.chunks: dict[str, list[bytes]] = {}

    def send_artifacts(self, submission, chunks):
        self.chunks[submission] = list(chunks)


def test_a_run_writes_into_its_own_folder_whose_files_are_sent_and_the_folder_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "CHUNK_BYTES", 64)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = ("import os, sys; d = os.environ['INFRA_RUN_DIR']; assert sys.argv[1] == d, sys.argv;"
            "assert os.listdir(d) == []; open(os.path.join(d, 'out.bin'), 'wb').write(os.urandom(300));"
            "print('wrote', d); sys.exit(3)")
    channel = ArtifactChannel()
    request = RunRequest("s1", "r1", "s1.r1.1", (PY, "-c", code, "{run_dir}"), cwd=str(tmp_path), artifact_limit=10_000)
    end = execute(request, channel, host="h", worker="w@h", scratch=str(scratch))
    assert end["status"] == "failed"  # whatever the status, the files come
    info = end["artifacts"]
    data = b"".join(channel.chunks["s1.r1.1"])
    assert info["chunks"] == len(channel.chunks["s1.r1.1"]) > 1
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["files"] == 1 and info["bytes"] == 300
    assert [(name, len(content)) for name, content in members(data).items()] == [("out.bin", 300)]
    assert channel.lines() == [f"wrote {scratch}/infra-run-s1.r1.1"]
    assert os.listdir(scratch) == []  # the attempt's folder is gone


def test_a_run_that_leaves_nothing_sends_no_chunk(tmp_path):
    channel = ArtifactChannel()
    end = execute(RunRequest("s1", "r1", "s1.r1.1", ("true",), cwd=str(tmp_path)), channel, host="h", worker="w@h",
                  scratch=str(tmp_path))
    assert end["artifacts"]["chunks"] == 0 and channel.chunks == {}


# --------------------------------------------------------------------------- the driver keeps the archive


class ChunkRedis(FakeRedis):
    def get(self, key):
        return self.values.get(key)


def driver_with_artifacts(tmp_path, retries=0):
    plan = {"format": protocol.PLAN_FORMAT, "sweep_id": "sw", "name": "demo", "queue": "celery", "retries": retries,
            "message": {"cwd": "/project", "timeout": None, "gpus_per_task": 1, "env": {}, "artifact_limit": 5000},
            "runs": [{"run": "r1", "argv": ["job"]}],
            "artifacts_output": str(tmp_path), "artifacts_folder": "sweep-demo/artifacts"}
    redis, sender, out = ChunkRedis(), FakeSender(), Lines()
    return Driver(plan, redis, sender, Output(out), SIGNING_KEY.encode(), new_nonce=lambda: "n"), redis, sender, out


def report_run(redis, sender, data: bytes, sha: str | None = None, status="ok"):
    def work():
        for submission, message, _ in list(sender.sent):
            if protocol.artifact_chunk_key("sw", submission, 0) in redis.values or submission in redis.sets["done"]:
                continue
            chunks = artifacts.split_chunks(data, 100)
            for number, chunk in enumerate(chunks):
                redis.set(protocol.artifact_chunk_key("sw", submission, number), chunk)
            base = {"run": message["run"], "submission": submission}
            info = {"chunks": len(chunks), "sha256": sha or hashlib.sha256(data).hexdigest(), "files": 1, "bytes": 9,
                    "limit": 5000, "refused": ["leak (a symbolic link)"], "refused_count": 1}
            redis.rpush(protocol.events_key("sw"), protocol.encode({**base, "event": "start", "host": "h"}),
                        protocol.encode({**base, "event": "end", "status": status, "exit_code": 0, "seconds": 1,
                                         "host": "h", "artifacts": info}))
            redis.sets["done"].add(submission)
    redis.on_pop = work


def archive(files: dict[str, bytes]) -> bytes:
    from infra.runtime.tarball import Member, pack_gzip

    return pack_gzip([Member(name, data, 0o644) for name, data in files.items()])


def test_the_driver_puts_the_chunks_together_keeps_the_archive_and_says_so_before_the_end(tmp_path):
    driver, redis, sender, out = driver_with_artifacts(tmp_path)
    data = archive({"result.txt": b"x" * 400})
    report_run(redis, sender, data)
    assert driver.run() == 0
    assert sender.sent[0][1]["artifact_limit"] == 5000  # signed with the run
    assert (tmp_path / "sweep-demo" / "artifacts" / "r1.tar.gz").read_bytes() == data
    kinds = [e["event"] for e in out.events()]
    assert kinds.index("artifacts") == kinds.index("end") - 1
    told = next(e for e in out.events() if e["event"] == "artifacts")
    assert told["path"] == "sweep-demo/artifacts/r1.tar.gz" and told["sha256"] == hashlib.sha256(data).hexdigest()
    assert told["warning"] == "1 item(s) not a regular file or folder left out, never read: leak (a symbolic link)"
    assert not [key for key in redis.values if ":artifact:" in key]  # the chunks are taken from Redis


def test_chunks_that_do_not_match_their_announcement_are_not_kept(tmp_path):
    driver, redis, sender, out = driver_with_artifacts(tmp_path)
    report_run(redis, sender, archive({"a": b"1"}), sha="0" * 64)
    assert driver.run() == 0
    assert not (tmp_path / "sweep-demo" / "artifacts" / "r1.tar.gz").exists()
    told = next(e for e in out.events() if e["event"] == "artifacts")
    assert told["path"] is None and "did not arrive whole: none kept" in told["warning"]


def test_the_driver_never_writes_through_a_link_planted_in_the_output_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "sweep-demo").mkdir()
    os.symlink(elsewhere, tmp_path / "sweep-demo" / "artifacts")
    driver, redis, sender, out = driver_with_artifacts(tmp_path)
    report_run(redis, sender, archive({"a": b"1"}))
    assert driver.run() == 0
    assert os.listdir(elsewhere) == []
    told = next(e for e in out.events() if e["event"] == "artifacts")
    assert "could not be written on the master" in told["warning"]


def test_a_retried_attempts_chunks_are_dropped_and_the_last_attempt_counts(tmp_path):
    driver, redis, sender, out = driver_with_artifacts(tmp_path, retries=1)
    report_run(redis, sender, archive({"a": b"1"}), status="failed")
    driver.run()  # the run fails twice
    assert [s for s, _, _ in sender.sent] == ["sw.r1.1.n", "sw.r1.2.n"]
    assert [e["event"] for e in out.events()].count("artifacts") == 1  # only the final attempt's
    assert not [key for key in redis.values if ":artifact:" in key]


# --------------------------------------------------------------------------- unpacking here


def raw_tar(add) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add(tar)
    return buffer.getvalue()


def test_unpacking_writes_regular_files_into_the_runs_folder_only(tmp_path):
    def add(tar):
        for name, data in (("ok.txt", b"fine"), ("sub/deep.txt", b"deep"), ("../escape.txt", b"bad"),
                           ("/etc/abs.txt", b"bad"), ("big.bin", b"z" * 2000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    output = tmp_path / "output"
    unpacked = unpack_run_archive(raw_tar(add), output, "sweep-demo/runs/3", 1000)
    run = output / "sweep-demo" / "runs" / "3"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == ["ok.txt", "sub/deep.txt"]
    assert (run / "ok.txt").read_bytes() == b"fine"
    assert unpacked.files == ["ok.txt", "sub/deep.txt"] and unpacked.bytes == 8
    assert len(unpacked.refused) == 4
    assert not (tmp_path / "escape.txt").exists() and not (output / "sweep-demo" / "runs" / "escape.txt").exists()


def test_unpacking_never_writes_through_a_link_already_in_the_runs_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "output" / "sweep-demo" / "runs"
    run.mkdir(parents=True)
    os.symlink(elsewhere, run / "1")
    unpacked = unpack_run_archive(archive({"a.txt": b"1"}), tmp_path / "output", "sweep-demo/runs/1", 1000)
    assert unpacked.files == [] and len(unpacked.refused) == 1 and os.listdir(elsewhere) == []


# --------------------------------------------------------------------------- on this machine's side


class MasterWithArchives:
    """The master's exec, answering the output fetch of `commands.files.fetch_output` with these files."""

    def __init__(self, files: dict[str, bytes]):
        master = self

        class Engine:
            ops: list = []

            def exec(self, op, timeout=None):
                self.ops.append(op)
                names = json.loads(op.command[-1])
                body = raw_tar(lambda tar: [add_file(tar, name, master.files[name]) for name in names
                                            if name in master.files])

                class Answer:
                    ok, stdout, stderr = True, base64.b64encode(body).decode(), ""
                return Answer()

        self.files = files
        self.engine = Engine()


def add_file(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))



def test_the_recorder_warns_logs_and_marks_the_csv_then_brings_the_files_home(cluster):  # noqa: F811
    plan = prepared(cluster)
    captured = Captured()
    recorder = captured.recorder(plan)
    first, second = plan.runs[0], plan.runs[1]
    data = archive({"metrics.json": b"{}"})
    for run, fields in ((first, {"path": f"sweep-parameters/artifacts/{first.id}.tar.gz", "files": 1, "bytes": 2,
                                 "sha256": hashlib.sha256(data).hexdigest()}),
                        (second, {"path": None, "warning": "1 file(s) over the artifact limit of 1 kB left out: big"})):
        recorder.on_driver_stdout(event("start", run, host="h", worker="w@h", attempt=1))
        recorder.on_driver_stdout(event("artifacts", run, **fields))
        recorder.on_driver_stdout(event("end", run, status="ok", exit_code=0, seconds=1.0, host="h", attempt=1))
    assert f"[2/4] warning: its files: 1 file(s) over the artifact limit of 1 kB left out: big" in captured.out
    conn = MasterWithArchives({f"sweep-parameters/artifacts/{first.id}.tar.gz": data})
    brought, problems = bring_artifacts(conn, cluster, plan, recorder, 1000)
    assert (brought, problems) == (1, [])
    assert [op.container for op in conn.engine.ops] == ["lab-master"]  # read in the master container
    assert (plan.output_dir / "sweep-parameters" / "runs" / str(first.index) / "metrics.json").read_bytes() == b"{}"
    summary = recorder.close()
    rows = list(csv.DictReader(io.StringIO(plan.csv_path.read_text())))
    assert rows[0]["artifacts"] == f"1 file(s), 2 B in output/sweep-parameters/runs/{first.index}/"
    assert rows[1]["artifacts"] == "warning: 1 file(s) over the artifact limit of 1 kB left out: big"
    assert "# files ($INFRA_RUN_DIR): warning: 1 file(s) over" in plan.log_path(second).read_text()
    assert summary.ok == 2


def test_a_run_that_announces_more_chunks_than_its_limit_allows_gets_none_read(tmp_path):
    driver, redis, sender, out = driver_with_artifacts(tmp_path)

    def work():
        for submission, message, _ in list(sender.sent):
            if submission in redis.sets["done"]:
                continue
            base = {"run": message["run"], "submission": submission}
            info = {"chunks": 10**6, "sha256": "0" * 64, "files": 1, "bytes": 1, "limit": 5000}
            redis.rpush(protocol.events_key("sw"), protocol.encode({**base, "event": "start", "host": "h"}),
                        protocol.encode({**base, "event": "end", "status": "ok", "exit_code": 0, "seconds": 1,
                                         "host": "h", "artifacts": info}))
            redis.sets["done"].add(submission)
    redis.on_pop = work
    reads = []
    redis.get = lambda key: reads.append(key)
    assert driver.run() == 0
    assert reads == []
    told = next(e for e in out.events() if e["event"] == "artifacts")
    assert "more than its limit allows: none kept" in told["warning"] and told["path"] is None


def test_a_signed_negative_artifact_limit_is_refused_and_a_missing_one_is_the_default():
    from infra.runtime import signing

    fields = {"sweep_id": "s", "run": "r", "submission": "s.r.1.n", "argv": ["true"], "cwd": "/", "env": {},
              "timeout": None, "gpus_per_task": 0}
    message = signing.sign_message(signing.new_payload({**fields, "artifact_limit": -1}, now=1000.0),
                                   SIGNING_KEY.encode())
    from tests.unit.test_sweep_runtime import VERIFY_KEY

    with pytest.raises(signing.RunRefused, match="artifact_limit is negative"):
        signing.verify_message(message, VERIFY_KEY.encode(), submission="s.r.1.n", now=1000.0)
    plain = signing.sign_message(signing.new_payload(fields, now=1000.0), SIGNING_KEY.encode())
    payload = signing.verify_message(plain, VERIFY_KEY.encode(), submission="s.r.1.n", now=1000.0)
    assert RunRequest.from_payload(payload).artifact_limit == artifacts.DEFAULT_LIMIT_BYTES
