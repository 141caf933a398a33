"""The agent's main loop does not poll: idle, it sleeps until a line comes, a telemetry window
or status is due, or the agent stops, and a stop wakes it at once; nor does the idle updater,
which waits for a command or the shutdown. And an event publishes the status only when the
model serving changed."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import edge_agent.agent as agent_module
from cloud_hub.broker.local import RunningBroker
from cloud_hub.rollout.operations import enroll_device, init_hub
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.protocol.messages import ModelRef
from edge_agent.sources.backlog import Message
from tests.support.models import active_model

WAIT_S = 10


class Watched:
    """The agent's get_batch, recording each call's timeout; `waiting` is set once the loop
    has asked `calls` times."""

    def __init__(self, agent: Agent, calls: int) -> None:
        self.timeouts: list[float] = []
        self.waiting = threading.Event()
        self._calls = calls
        self._get = agent.lines.get_batch
        agent.lines.get_batch = self  # type: ignore[method-assign]

    def __call__(self, most: int, timeout: float) -> list[Message]:
        self.timeouts.append(timeout)
        if len(self.timeouts) >= self._calls:
            self.waiting.set()
        return self._get(most, timeout)


def idle_agent(tmp_path: Path, seconds: float, broker: RunningBroker | None = None) -> Agent:
    init_hub(tmp_path / "hub")
    enroll_device(tmp_path / "hub", "pi-01", tmp_path / "state-pi-01")
    path = tmp_path / "agent.toml"
    where = f"[broker]\nhost = {broker.host!r}\nport = {broker.port}\n" if broker else ""
    path.write_text(
        f'[device]\nid = "pi-01"\n[telemetry]\ninterval_s = {seconds}\n'
        f"status_interval_s = {seconds}\n{where}"
    )
    return Agent(load_config(path))


@contextlib.contextmanager
def asleep(agent: Agent) -> Iterator[Watched]:
    """The agent's main loop on a thread, once it has gone to sleep (its second wait for
    lines); stopped at the end, which must wake it (however long it meant to sleep)."""
    watched = Watched(agent, 2)
    thread = threading.Thread(target=agent.run_forever, daemon=True)
    thread.start()
    try:
        assert watched.waiting.wait(WAIT_S)
        yield watched
    finally:
        agent.stop_event.set()
        thread.join(WAIT_S)
    assert not thread.is_alive(), "the stop did not wake the main loop"


def test_an_idle_loop_sleeps_until_a_window_or_status_is_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "IDLE_WAIT_S", 600.0)
    with asleep(idle_agent(tmp_path, 30.0)) as watched:
        pass
    # the first pass flushes and publishes at once; then it waits for the next, 30 s away
    assert watched.timeouts[0] == 0.0
    assert 20.0 < watched.timeouts[1] <= 30.0


def test_a_stop_wakes_the_idle_loop_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "IDLE_WAIT_S", 600.0)
    with asleep(idle_agent(tmp_path, 600.0)) as watched:
        assert watched.timeouts[1] > 500  # asleep until something is due, ten minutes away


def test_the_idle_updater_waits_for_a_command_and_the_shutdown_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: RunningBroker
) -> None:
    monkeypatch.setattr(agent_module, "IDLE_WAIT_S", 600.0)
    agent = idle_agent(tmp_path, 600.0, broker)
    timeouts: list[float | None] = []
    waiting = threading.Event()
    get = agent.commands.get

    def watched(block: bool = True, timeout: float | None = None) -> object:
        timeouts.append(timeout)
        waiting.set()
        return get(block, timeout)

    agent.commands.get = watched  # type: ignore[method-assign]
    agent.start()
    assert waiting.wait(WAIT_S), "the updater never waited for a command"
    agent.shutdown()
    updater = agent._updater_thread
    assert updater is not None and not updater.is_alive(), "the shutdown did not wake the updater"
    assert timeouts[0] == 600.0  # one wait, as long as the agent allows: no polling


def test_lines_are_taken_as_they_come(tmp_path: Path) -> None:
    agent = idle_agent(tmp_path, 600.0)
    taken = threading.Event()
    seen: list[list[Message]] = []

    def process(batch: list[Message]) -> None:
        seen.append(batch)
        taken.set()

    agent.pipeline.process = process  # type: ignore[method-assign]
    with asleep(agent):  # ten minutes from anything due
        agent.lines.put_nowait(("csv", b"1,2,3,4"))
        assert taken.wait(WAIT_S), "a line did not wake the idle loop"
    assert seen == [[("csv", b"1,2,3,4")]]


def test_an_event_publishes_the_status_only_when_the_serving_model_changed(
    tmp_path: Path,
) -> None:
    """An update's offered, downloading, verified and installed change nothing the status
    says (their records say them); the model that now serves is said at once."""
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    model = active_model(clf, x, y, "iris", tmp_path / "iris-3.zip")
    agent = idle_agent(tmp_path, 600.0)
    published: list[ModelRef | None] = []
    publish = agent._publish_status

    def counted() -> None:
        publish()
        published.append(agent._status_model)

    agent._publish_status = counted  # type: ignore[method-assign]
    try:
        ref = model.card.model
        for event in ("offered", "downloading", "verified", "installed"):
            agent._event(event, ref, "", "r1")
        assert published == []
        agent.pipeline.active = model  # the gate passed: the new model serves
        agent._event("healthy", ref, "", "r1")
        assert published == [ref]
        agent._event("healthy", ref, "already running", "r2")
        assert published == [ref]
        status = json.loads((tmp_path / "state-pi-01" / "status.json").read_text())
        assert status["model"] == {"name": "iris", "version": 3}
        assert [p.record.body["event"] for p in agent.buffer.take(10, set())] == [
            "offered",
            "downloading",
            "verified",
            "installed",
            "healthy",
            "healthy",
        ]
    finally:
        agent.buffer.close()
