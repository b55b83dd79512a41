"""The connectivity monitor: each transition reported once, probes paced by the state."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from stowpay.reader.cloud_link import CloudRefused, CloudUnreachable
from stowpay.reader.connectivity import ConnectivityMonitor
from stowpay.wire.clock import ManualClock, SystemClock

#: How long a test waits for the background thread before it gives up (never asserted on).
PATIENCE = 30.0


class Heartbeat:
    """A probe that answers as told: reachable, unreachable, refused, or broken."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if self.mode == "down":
            raise CloudUnreachable("connection refused")
        if self.mode == "refused":
            raise CloudRefused(401, "device_key_invalid", "unknown device key")
        if self.mode == "broken":
            raise ValueError("a bug in the probe")
        return {"server_time": 0}


class Changes:
    """Collects on_change calls; lets a test wait for them."""

    def __init__(self) -> None:
        self.seen: list[bool] = []
        self.cond = threading.Condition()

    def __call__(self, online: bool) -> None:
        with self.cond:
            self.seen.append(online)
            self.cond.notify_all()

    def wait_for(self, condition: Callable[[list[bool]], bool]) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: condition(self.seen), timeout=PATIENCE)


@pytest.fixture
def heartbeat() -> Heartbeat:
    return Heartbeat()


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def monitors() -> Iterator[list[ConnectivityMonitor]]:
    made: list[ConnectivityMonitor] = []
    yield made
    for monitor in made:
        monitor.stop()


def test_each_transition_is_reported_once(
    heartbeat: Heartbeat, changes: Changes, clock: ManualClock
) -> None:
    monitor = ConnectivityMonitor(heartbeat, on_change=changes, clock=clock)
    assert monitor.online is False and monitor.last_ok_at is None
    script = ["ok", "ok", "down", "down", "down", "ok", "refused", "broken", "broken", "ok"]
    results = []
    for mode in script:
        heartbeat.mode = mode
        clock.advance(1.0)
        results.append(monitor.check())
    assert results == [True, True, False, False, False, True, True, False, False, True]
    assert changes.seen == [True, False, True, False, True]
    assert heartbeat.calls == len(script)


def test_a_refusal_means_the_cloud_is_there(
    heartbeat: Heartbeat, changes: Changes, clock: ManualClock
) -> None:
    heartbeat.mode = "refused"
    monitor = ConnectivityMonitor(heartbeat, on_change=changes, clock=clock)
    assert monitor.check() is True
    assert monitor.last_ok_at == clock.now()
    assert changes.seen == [True]


def test_last_ok_at_follows_the_clock(
    heartbeat: Heartbeat, changes: Changes, clock: ManualClock
) -> None:
    monitor = ConnectivityMonitor(heartbeat, on_change=changes, clock=clock)
    monitor.check()
    reached = clock.now()
    heartbeat.mode = "down"
    clock.advance(30.0)
    monitor.check()
    assert monitor.online is False
    assert monitor.last_ok_at == reached
    heartbeat.mode = "ok"
    clock.advance(30.0)
    monitor.check()
    assert monitor.last_ok_at == clock.now()


def test_probes_are_paced_by_the_state(
    heartbeat: Heartbeat, changes: Changes, clock: ManualClock
) -> None:
    monitor = ConnectivityMonitor(
        heartbeat, on_change=changes, interval=10.0, offline_interval=2.0, clock=clock
    )
    assert monitor.next_check_at is None
    monitor.check()
    assert monitor.next_check_at == clock.now() + 10.0
    heartbeat.mode = "down"
    clock.advance(10.0)
    monitor.check()
    assert monitor.next_check_at == clock.now() + 2.0
    heartbeat.mode = "ok"
    clock.advance(2.0)
    monitor.check()
    assert monitor.next_check_at == clock.now() + 10.0


def test_a_failing_listener_does_not_stop_the_monitor(
    heartbeat: Heartbeat, clock: ManualClock
) -> None:
    seen: list[bool] = []

    def on_change(online: bool) -> None:
        seen.append(online)
        raise RuntimeError("the listener failed")

    monitor = ConnectivityMonitor(heartbeat, on_change=on_change, clock=clock)
    assert monitor.check() is True
    heartbeat.mode = "down"
    assert monitor.check() is False
    assert seen == [True, False]
    assert monitor.online is False


def test_intervals_must_be_positive(heartbeat: Heartbeat, changes: Changes) -> None:
    with pytest.raises(ValueError):
        ConnectivityMonitor(heartbeat, on_change=changes, interval=0, clock=ManualClock())


def test_background_thread_reports_transitions_and_stops(
    heartbeat: Heartbeat, changes: Changes, monitors: list[ConnectivityMonitor]
) -> None:
    monitor = ConnectivityMonitor(
        heartbeat,
        on_change=changes,
        interval=0.005,
        offline_interval=0.001,
        clock=SystemClock(),
    )
    monitors.append(monitor)
    monitor.start()
    assert changes.wait_for(lambda seen: seen == [True])
    heartbeat.mode = "down"
    assert changes.wait_for(lambda seen: seen == [True, False])
    heartbeat.mode = "ok"
    assert changes.wait_for(lambda seen: seen == [True, False, True])
    monitor.stop(timeout=PATIENCE)
    assert not monitor.running
    # No transition is reported twice: each was seen exactly once above, in order.
    assert changes.seen == [True, False, True]


def test_background_thread_probes_at_once_and_stops_while_waiting(
    heartbeat: Heartbeat, changes: Changes, monitors: list[ConnectivityMonitor]
) -> None:
    # A long interval: after the first probe the thread sleeps; stop() must end the wait.
    clock = ManualClock()
    monitor = ConnectivityMonitor(heartbeat, on_change=changes, interval=3600.0, clock=clock)
    monitors.append(monitor)
    monitor.start()
    assert changes.wait_for(lambda seen: seen == [True])
    monitor.stop(timeout=PATIENCE)
    assert not monitor.running
    assert heartbeat.calls == 1
