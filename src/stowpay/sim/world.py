"""One simulated run: a POS, a reader (core, vault, forwarder) and the cloud in one process, one
thread, one seeded random source, driven tick by tick through a fault schedule.

Phases. *Safety*: payments are taken while the seed's faults happen (reader crashes at write
boundaries and between them, lost, duplicated and reordered requests, partitions, cloud
restarts, clock jumps). *Liveness*: every fault is healed, the reader restarts if it is down,
the POS connects online, and the reader's store must drain within `LIVENESS_TICKS` ticks. The
`checker` then reads the cloud's charges and the vault and classifies every payment.

A crash is a `SimCrash` raised from the reader's write hook (before or after a vault commit, a
tip file or a state file write) or between ticks: the reader's objects are abandoned, the
vault's connection and lock dropped with nothing more written, and the next incarnation opens
the same files, as a reader restarting after a crash would. The vault's behaviour under power
loss (unsynced writes dropped or torn) is tested separately, below the page cache.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..cloud.api import Context
from ..cloud.domain import terminal as terminal_domain
from ..cloud.domain.accounts import create_account
from ..cloud.storage import Store
from ..reader.cloud_link import ForwardOutcome, HttpCloudLink
from ..reader.connectivity import ConnectivityMonitor
from ..reader.core import Event, ReaderCore, ReaderError
from ..reader.presentment import Presentment
from ..reader.state import ReaderState
from ..reader.vault import StoredPayment, Vault, VaultError
from ..wire.clock import ManualClock
from ..wire.terminal_codes import ErrorCode
from .cloud import SimCloud, SimIds
from .network import Faults, SimNetwork
from .options import JUMPS, Options
from .trace import Trace

T = TypeVar("T")

#: Ticks the store has to drain in once every fault is healed.
LIVENESS_TICKS = 200
#: Seconds per tick in the liveness phase.
LIVENESS_STEP = 5.0
START = 1_780_000_000.0
POS_ID = "till-1"
APPROVE = "4242424242424242"
ONLINE, OFFLINE = "prefer_online", "force_offline"
DECLINE = "4000000000000002"
#: How often the reader probes the cloud (online, offline). Longer than the daemon's
#: defaults (10 s, 2 s): a heartbeat costs a run more than anything else, and what matters is
#: that probes interleave with everything else, which they still do.
HEARTBEAT = 60.0
OFFLINE_PROBE = 10.0


class SimCrash(BaseException):
    """The reader process stops here. A BaseException, so no `except Exception` in the product
    can swallow it: a crash is not an error the code handles."""


@dataclass
class Attempt:
    """One payment the POS tried, and what it was told."""

    id: str
    amount: int
    behavior: str
    card: str
    capture_method: str
    tick: int
    #: "stored" (offline, acknowledged), "charged" (online, succeeded), "failed" (a definite
    #: refusal: nothing kept), "unknown" (a crash or a lost answer: charged once or not at all)
    told: str = "unknown"
    detail: str = ""


@dataclass
class _Reader:
    state: ReaderState
    vault: Vault
    core: ReaderCore
    monitor: ConnectivityMonitor


@dataclass
class Template:
    """A registered reader and its cloud on disk, copied for each run (setting them up costs
    more than a run)."""

    directory: Path
    account: str
    location: str
    pairing_secret: str

    @classmethod
    def build(cls, directory: Path) -> Template:
        """Make the cloud (account, offline-enabled Location) and register a reader with it."""
        clock = ManualClock(START - 3600)
        directory.mkdir(parents=True, exist_ok=True)
        db = directory / "cloud.db"
        store = Store(str(db))
        store.migrate()
        ids = SimIds(0)
        with store.write() as tx:
            account = create_account(tx, clock, ids).account
            ctx = Context(account, tx, clock, ids, "req_setup", None)
            config = terminal_domain.create_configuration(ctx, name="sim", offline=True)
            location = terminal_domain.create_location(
                ctx,
                display_name="Sim shop",
                address={"line1": "1 Main St", "city": "Springfield", "country": "US"},
                configuration_overrides=config["id"],
                metadata=None,
                phone=None,
            )
        store.close()
        cloud = SimCloud(db, clock, account=account["id"], location=location["id"])
        trace = Trace()
        network = SimNetwork(cloud, random.Random(0), trace)
        state = ReaderState.open(directory / "reader", rng=random.Random(0))
        vault = Vault.open(state.vault_dir, clock=clock)
        link = HttpCloudLink("http://cloud.sim", transport=network)
        codes: list[str] = []
        core = ReaderCore(
            state, vault, link, clock=clock, rng=random.Random(0), on_registration_code=codes.append
        )
        core.poll_registration()
        cloud.register_reader(codes[-1])
        if not core.poll_registration() or state.context is None:
            raise RuntimeError("the template reader did not register")
        core.set_online(True)
        answer = core.connect(pos_id=POS_ID, connection_token=cloud.connection_token())
        core.close()
        vault.close()
        cloud.close()
        return cls(directory, account["id"], location["id"], str(answer["pairing_secret"]))


class Simulation:
    """One seed's run over a copy of `template` in `workdir`."""

    def __init__(self, options: Options, template: Template, workdir: Path) -> None:
        self.o = options
        self.rng = random.Random(f"stowpay-sim:{options.seed}")
        self.trace = Trace()
        self.tick = 0
        self.clock = ManualClock(START)
        shutil.copytree(template.directory, workdir, dirs_exist_ok=True)
        self.workdir = workdir
        self.cloud = SimCloud(
            workdir / "cloud.db", self.clock, account=template.account, location=template.location
        )
        self.cloud.forget_on_restart = options.plant == "cloud_forgets"
        self.network = SimNetwork(self.cloud, random.Random(self.rng.random()), self.trace)
        self.link = HttpCloudLink("http://cloud.sim", transport=self.network)
        self.pairing: str | None = template.pairing_secret
        self.session: str | None = None
        self.reader: _Reader | None = None
        self.incarnation = 0
        self.reader_down_until = 0
        self.cloud_down_until = 0
        self.crash_armed = False
        self.crashes = 0
        self.attempts: list[Attempt] = []
        self.liveness_ticks: int | None = None
        self.partition_ticks = self._partition_schedule()
        self.held_after_drain: list[StoredPayment] = []
        self.quarantined = 0

    # -- the schedule --------------------------------------------------------------------------

    def _partition_schedule(self) -> set[int]:
        """Swizzle-clogging: outages of the link at random places in the fault phase."""
        ticks: set[int] = set()
        for _ in range(self.o.partitions):
            start = self.rng.randrange(self.o.fault_ticks)
            ticks.update(range(start, start + self.rng.randint(1, self.o.partition_ticks)))
        return ticks

    def run(self) -> None:
        """Both phases; afterwards `attempts`, the cloud and the vault are ready to check."""
        self.network.faults = Faults(
            self.o.drop_request, self.o.drop_response, self.o.duplicate, self.o.delay
        )
        pay_at = sorted(self.rng.sample(range(self.o.fault_ticks), self.o.payments))
        self._boot()
        for tick in range(self.o.fault_ticks):
            self._safety_tick(tick, pay_at.count(tick))
        self._heal()
        for n in range(LIVENESS_TICKS):
            if self._drained():
                self.liveness_ticks = n
                break
            self._liveness_tick()
        self._finish()

    def _safety_tick(self, tick: int, payments: int) -> None:
        self.tick = self.network.tick = tick
        self.clock.advance(self.rng.choice((1.0, 2.0, 5.0, 10.0, 30.0)))
        if self.rng.random() < self.o.clock_jump:
            jump = self.rng.choice(JUMPS)
            self.clock.advance(jump)
            self.trace.add(tick, "clock.jump", int(jump))
        self.network.partitioned = tick in self.partition_ticks
        if self.cloud_down_until and tick >= self.cloud_down_until:
            self.cloud_down_until = 0
            self.network.cloud_down = False
            self.trace.add(tick, "cloud.up", self.cloud.epoch)
        if not self.cloud_down_until and self.rng.random() < self.o.cloud_restart:
            self.cloud.restart()
            self.cloud_down_until = tick + self.rng.randint(1, 4)
            self.network.cloud_down = True
            self.trace.add(tick, "cloud.restart", self.cloud.epoch)
        self.network.deliver_held()
        if self.reader is not None and self.rng.random() < self.o.crash_tick:
            self._crashed("between_writes")
        if self.reader is None and tick >= self.reader_down_until:
            self._boot()
        for _ in range(payments):
            self._pay()
        self._background()

    def _heal(self) -> None:
        self.tick += 1
        self.trace.add(self.tick, "heal")
        self.network.tick = self.tick
        self.network.faults = Faults()
        self.network.partitioned = False
        self.crash_armed = False
        self.network.deliver_held(everything=True)
        if self.cloud_down_until:
            self.cloud_down_until = 0
            self.network.cloud_down = False
            self.trace.add(self.tick, "cloud.up", self.cloud.epoch)

    def _liveness_tick(self) -> None:
        self.tick += 1
        self.network.tick = self.tick
        self.clock.advance(LIVENESS_STEP)
        if self.reader is None:
            self._boot()
        if self.session is None and not self.o.unattended:
            self._connect()
        self._background()

    def _drained(self) -> bool:
        reader = self.reader
        if reader is None:
            return False
        try:
            summary = reader.vault.summary()
        except VaultError:
            return False
        return summary.count == 0

    def _finish(self) -> None:
        """Look into the vault once more (what is still held is stuck), then shut down."""
        reader = self.reader
        if reader is None:
            self._boot()
            reader = self.reader
        if reader is not None:
            self.held_after_drain = reader.vault.pending()
            self.quarantined = reader.vault.summary().quarantined
            reader.core.close()
            reader.vault.abandon()
        self.reader = None
        self.cloud.close()

    # -- the reader ----------------------------------------------------------------------------

    def _write_hook(self, name: str) -> None:
        if self.crash_armed and self.rng.random() < self.o.crash_write:
            raise SimCrash(name)

    def _boot(self) -> None:
        """Start a reader incarnation on the files the last one left."""
        self.incarnation += 1
        self.trace.add(self.tick, "reader.boot", self.incarnation)
        rng = random.Random(f"stowpay-sim-reader:{self.o.seed}:{self.incarnation}")
        vault: Vault | None = None
        try:
            state = ReaderState.open(self.workdir / "reader", rng=rng, write_hook=self._write_hook)
            vault = Vault.open(state.vault_dir, clock=self.clock, write_hook=self._write_hook)
            link: Any = self.link
            if self.o.plant == "remove_first":
                link = _RemoveFirstLink(self.link, vault)
            core = ReaderCore(
                state,
                vault,
                link,
                clock=self.clock,
                rng=rng,
                unattended_forwarding=self.o.unattended,
                token_wait=0.0,
                forwarder_options={
                    "batch_size": self.o.batch_size,
                    "base_delay": self.o.base_delay,
                    "max_delay": self.o.max_delay,
                },
            )
            monitor = ConnectivityMonitor(
                core.heartbeat,
                on_change=core.set_online,
                interval=HEARTBEAT,
                offline_interval=OFFLINE_PROBE,
                clock=self.clock,
            )
            core.connectivity_check = monitor.check
            self.reader = _Reader(state, vault, core, monitor)
            self.crash_armed = self.o.crash_write > 0 and not self._healed
            monitor.check()
        except SimCrash as crash:
            if self.reader is None and vault is not None:
                vault.abandon()
            self._crashed(str(crash))

    @property
    def _healed(self) -> bool:
        return self.network.faults == Faults() and self.tick >= self.o.fault_ticks

    def _crashed(self, where: str) -> None:
        self.crashes += 1
        self.trace.add(self.tick, "reader.crash", where)
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.vault.abandon()
        self.session = None
        self.reader_down_until = self.tick + self.rng.randint(1, 3)

    def _in_reader(self, act: Callable[[_Reader], T]) -> T | None:
        """Run `act` on the live reader; a crash inside ends this incarnation."""
        reader = self.reader
        if reader is None:
            return None
        try:
            return act(reader)
        except SimCrash as crash:
            self._crashed(str(crash))
            return None

    def _background(self) -> None:
        """What the reader's threads would do this tick: probe the cloud, forward."""

        def probe(r: _Reader) -> None:
            due = r.monitor.next_check_at
            if due is None or self.clock.now() >= due:
                was = r.monitor.online
                online = r.monitor.check()
                if online != was:
                    self.trace.add(self.tick, "reader.online" if online else "reader.offline")

        def forward(r: _Reader) -> None:
            result = r.core.forwarder.step()
            if result is not None and (result.forwarded or result.error is not None):
                error = None if result.error is None else str(result.error.code)
                self.trace.add(
                    self.tick, "reader.forward", result.forwarded, result.remaining, error
                )

        self._in_reader(probe)
        self._in_reader(forward)

    # -- the POS -------------------------------------------------------------------------------

    def _backend_token(self) -> str | None:
        """A connection token from the merchant's backend, if the shop can reach it."""
        if not self.network.reachable:
            return None
        if self.rng.random() < self.o.stale_token:
            self.trace.add(self.tick, "pos.stale_token")
            return self.cloud.connection_token(age=16 * 60.0)
        return self.cloud.connection_token()

    def _connect(self) -> bool:
        reader = self.reader
        if reader is None:
            return False
        token = self._backend_token()

        def connect(r: _Reader) -> dict[str, Any] | None:
            try:
                return r.core.connect(
                    pos_id=POS_ID, connection_token=token, pairing_secret=self.pairing
                )
            except ReaderError as exc:
                self.trace.add(self.tick, "pos.connect_failed", str(exc.code))
                return None

        answer = self._in_reader(connect)
        if answer is None or self.reader is not reader:
            return False
        self.session = str(answer["session"])
        self.pairing = str(answer["pairing_secret"])
        self.trace.add(self.tick, "pos.connected", "offline" if answer["offline"] else "online")
        reader.core.subscribe(self.session, self._on_event)
        return True

    def _on_event(self, event: Event | None) -> None:
        if event is None:
            return
        name, data = event
        if name == "connection_token_request":
            reader, session = self.reader, self.session
            if reader is None or session is None:
                return
            token = self._backend_token()
            if token is None:
                reader.core.answer_token_request(
                    session, data["request_id"], error="the backend cannot be reached"
                )
            else:
                reader.core.answer_token_request(
                    session, data["request_id"], connection_token=token
                )
        elif name == "payment_intent_forwarded":
            self.trace.add(
                self.tick, "pos.forwarded", data["sequence"], data["status"], data["replayed"]
            )

    def _pay(self) -> None:
        if self.reader is None:
            self.trace.add(self.tick, "pos.reader_down")
            return
        if self.session is None and not self._connect():
            return
        n = len(self.attempts) + 1
        attempt = Attempt(
            id=f"a{n}",
            amount=self.rng.randint(100, 20_000),
            behavior=ONLINE if self.rng.random() < self.o.prefer_online else OFFLINE,
            card=DECLINE if self.rng.random() < self.o.decline else APPROVE,
            capture_method="manual" if self.rng.random() < self.o.manual else "automatic",
            tick=self.tick,
        )
        self.attempts.append(attempt)
        session = self.session
        assert session is not None

        def pay(r: _Reader) -> dict[str, Any]:
            pi = r.core.create_payment_intent(
                session,
                amount=attempt.amount,
                currency="usd",
                capture_method=attempt.capture_method,
                metadata={"sim_attempt": attempt.id},
                offline_behavior=attempt.behavior,
            )
            card = Presentment(
                number=attempt.card,
                exp_month=12,
                exp_year=2031,
                read_method="contact_emv",
                cardholder_name="Sim Customer",
            )
            r.core.collect(session, pi["local_id"], card)
            answer = r.core.confirm(session, pi["local_id"])
            if self.rng.random() < self.o.lan_retry:
                # The POS did not hear the answer and asks again: the same payment answers.
                answer = r.core.confirm(session, pi["local_id"])
            return answer

        try:
            answer = self._in_reader(pay)
        except ReaderError as exc:
            unknown = exc.code == ErrorCode.STRIPE_API_CONNECTION_ERROR
            attempt.told = "unknown" if unknown else "failed"
            attempt.detail = str(exc.code)
            if exc.code == ErrorCode.NOT_CONNECTED_TO_READER:
                self.session = None
        else:
            if answer is None:
                attempt.told, attempt.detail = "unknown", "reader crashed"
            elif answer["status"] in ("succeeded", "requires_capture"):
                attempt.told = "stored" if answer.get("offline_details") else "charged"
                attempt.detail = str(answer["status"])
            else:
                attempt.told, attempt.detail = "failed", str(answer["status"])
        self.trace.add(
            self.tick,
            "pos.pay",
            attempt.id,
            attempt.amount,
            attempt.behavior,
            attempt.card[-4:],
            attempt.told,
            attempt.detail,
        )


class _RemoveFirstLink:
    """The planted bug `remove_first`: records leave the vault as they are sent, before the
    cloud's outcome is in hand (a lost request then loses them). Everything else goes to the
    real link."""

    def __init__(self, link: HttpCloudLink, vault: Vault) -> None:
        self._link = link
        self._vault = vault

    def forward(
        self, device_key: str, records: Sequence[StoredPayment], *, connection_token: str | None
    ) -> list[ForwardOutcome]:
        self._vault.remove_many([r.sequence for r in records])
        return self._link.forward(device_key, records, connection_token=connection_token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


def scratch_root() -> Path:
    """Where runs keep their files: memory-backed when the machine has it (the vault's own
    durability is tested elsewhere; here fsync would only cost time)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else None
    return Path(tempfile.mkdtemp(prefix="stowpay-sim-", dir=base))
