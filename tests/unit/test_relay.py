"""The relay and the volunteer's side of follow-ups: which messages a volunteer rejects, and what
the relay does with one (the e2e test in tests/e2e/test_volunteer_broker.py runs both for real)."""

from __future__ import annotations

from celery import Celery, states

from infra.runtime import relay as relay_module
from infra.runtime import volunteer_worker


class Backend:
    def __init__(self, meta):
        self.meta, self.parts = meta, []

    def get_task_meta(self, task_id):
        return self.meta.get(task_id, {"status": states.PENDING, "result": None})

    def _call_task_errbacks(self, request, exc, traceback):
        raise AssertionError("no error callback was asked for")

    def on_chord_part_return(self, request, state, result):
        self.parts.append((request.id, request.group, request.chord["task"], state, result))


def relay_with(meta):
    backend = Backend(meta)
    return relay_module.Relay(Celery("probe", broker="memory://"), wait=0, backend=backend), backend


def test_a_message_has_follow_ups_when_it_embeds_a_chain_callbacks_errbacks_or_a_chord():
    assert not volunteer_worker.has_follow_ups({"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    assert volunteer_worker.has_follow_ups({"chain": [{"task": "b"}]})
    assert volunteer_worker.has_follow_ups({"chord": {"task": "merge"}})
    assert volunteer_worker.has_follow_ups({"callbacks": [{"task": "b"}]})


def test_a_volunteer_runs_the_task_without_its_follow_ups():
    class Task:
        class request:
            chain, callbacks, errbacks, chord = [{"task": "b"}], [{"task": "c"}], [{"task": "d"}], {"task": "m"}

    volunteer_worker.leave_follow_ups_to_the_relay(Task)
    assert (Task.request.chain, Task.request.callbacks, Task.request.errbacks, Task.request.chord) == (None,) * 4


def test_a_volunteer_rejects_a_message_with_follow_ups_and_acknowledges_the_others():
    class Message:
        def __init__(self, embed):
            self.payload = [[1], {}, embed]

    def outcome(embed):
        request = volunteer_worker.FollowUpRequest.__new__(volunteer_worker.FollowUpRequest)
        done = []
        request._message = Message(embed)
        request.reject = lambda requeue=False: done.append(("reject", requeue))
        request.acknowledged = False
        request._on_ack = lambda *args: done.append(("ack",))
        request._connection_errors = ()
        request.acknowledge()
        return done

    assert outcome({"chain": [{"task": "b"}]}) == [("reject", False)]
    assert outcome({"chain": None, "chord": None, "callbacks": None}) == [("ack",)]


def test_the_relay_publishes_the_chains_next_step_and_callbacks_with_the_stored_result(monkeypatch):
    relay, _ = relay_with({"t1": {"status": states.SUCCESS, "result": 3}})
    published = []
    monkeypatch.setattr("celery.canvas.Signature.apply_async",
                        lambda self, args=(), kwargs=None, **options: published.append((self.task, args, options)))
    headers = {"id": "t1", "task": "add", "root_id": "r0"}
    body = [[1, 2], {}, {"chain": [{"task": "third", "args": [], "kwargs": {}, "options": {}},
                                   {"task": "second", "args": [10], "kwargs": {}, "options": {}}],
                         "callbacks": [{"task": "linked", "args": [], "kwargs": {}, "options": {}}]}]
    assert relay.handle(headers, body) == "followed (SUCCESS)"
    assert [(task, args) for task, args, _ in published] == [("linked", (3,)), ("second", (3,))]
    assert published[1][2]["chain"] == [{"task": "third", "args": [], "kwargs": {}, "options": {}}]
    assert published[1][2]["parent_id"] == "t1" and published[1][2]["root_id"] == "r0"


def test_the_relay_does_a_chords_bookkeeping_for_a_part_that_succeeded_or_failed():
    error = ValueError("bad chunk")
    relay, backend = relay_with({"p1": {"status": states.SUCCESS, "result": {"a": 1}},
                                 "p2": {"status": states.FAILURE, "result": error}})
    chord = {"task": "merge", "args": [], "kwargs": {"chord_size": 2}, "options": {}}
    for task_id in ("p1", "p2"):
        relay.handle({"id": task_id, "task": "count", "group": "g1", "group_index": 0}, [["x"], {}, {"chord": chord}])
    assert backend.parts == [("p1", "g1", "merge", states.SUCCESS, {"a": 1}), ("p2", "g1", "merge", states.FAILURE, error)]


def test_the_relay_does_nothing_for_a_task_without_an_outcome_or_without_follow_ups():
    relay, backend = relay_with({})
    chord = {"task": "merge", "args": [], "kwargs": {}, "options": {}}
    assert relay.handle({"id": "p9", "group": "g1"}, [[], {}, {"chord": chord}]) == "left alone (PENDING)"
    assert relay.handle({"id": "p9"}, [[], {}, {"chain": None}]) == "nothing to follow"
    assert relay.handle({"id": "p9"}, "not a protocol 2 body") == "nothing to follow"
    assert backend.parts == []


def test_the_relay_calls_a_failed_tasks_error_callbacks_of_both_kinds_and_none_on_success(monkeypatch):
    app = Celery("probe", broker="memory://", backend="cache+memory://")
    called, published = [], []

    @app.task(name="on_error_full")
    def on_error_full(request, exc, traceback):  # Celery calls these in the process that saw the failure
        called.append((request.id, repr(exc), traceback))

    @app.task(name="on_error_id")
    def on_error_id(task_id):  # and publishes these, with the failed task's id
        raise AssertionError("published, not called")

    monkeypatch.setattr("celery.canvas.Signature.apply_async",
                        lambda self, args=(), kwargs=None, **options: published.append((self.task, args)))
    monkeypatch.setattr("celery.canvas.group.apply_async",
                        lambda self, args=(), kwargs=None, **options: published.extend((t.task, args) for t in self.tasks))
    app.backend.store_result("t1", ValueError("bad chunk"), states.FAILURE, traceback="Traceback: bad chunk")
    app.backend.store_result("t2", 5, states.SUCCESS)
    relay = relay_module.Relay(app, wait=0)
    errbacks = [app.signature("on_error_full"), app.signature("on_error_id")]
    assert relay.handle({"id": "t1", "task": "count"}, [[], {}, {"errbacks": errbacks}]) == "followed (FAILURE)"
    assert called == [("t1", "ValueError('bad chunk')", "Traceback: bad chunk")]
    assert published == [("on_error_id", ("t1",))]
    assert relay.handle({"id": "t2", "task": "count"}, [[], {}, {"errbacks": errbacks}]) == "followed (SUCCESS)"
    assert len(called) == 1 and len(published) == 1
