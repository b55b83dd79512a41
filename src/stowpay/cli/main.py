"""`stowpay`: serve the cloud, make accounts, run a reader, run the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..cloud.domain.accounts import NewAccount, create_account
from ..cloud.settings import Settings
from ..cloud.storage import Store

DEFAULT_DB = "stowpay.db"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stowpay")
def main() -> None:
    """Stowpay: offline-first card payments."""


@main.group()
def cloud() -> None:
    """The payments platform (Stripe-wire-compatible API)."""


def _open_store(db: str) -> Store:
    store = Store(db)
    try:
        store.migrate()
    except Exception as exc:  # a bad path or URL: say so in one line
        raise click.ClickException(
            f"cannot open database {db!r}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    return store


def _new_account(store: Store, settings: Settings) -> NewAccount:
    with store.write() as tx:
        return create_account(tx, settings.clock, settings.ids)


def _print_keys(new: NewAccount) -> None:
    click.echo(f"Account:          {new.account['id']}")
    click.echo(f"Secret key:       {new.secret_key}")
    click.echo(f"Publishable key:  {new.publishable_key}")


@cloud.command("create-account")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="SQLite file or PostgreSQL URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the account and keys as JSON.")
def create_account_cmd(db: str, as_json: bool) -> None:
    """Make an account and print its test keys (the secret key is shown only now)."""
    store = _open_store(db)
    new = _new_account(store, Settings(db=db))
    store.close()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "account": new.account["id"],
                    "secret_key": new.secret_key,
                    "publishable_key": new.publishable_key,
                }
            )
        )
    else:
        _print_keys(new)


@cloud.command("dashboard-token")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="SQLite file or PostgreSQL URL.")
@click.option("--account", "account_id", required=True, help="The account (acct_...).")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 365))
def dashboard_token_cmd(db: str, account_id: str, days: int) -> None:
    """Print a token to sign in to an account's /dashboard with, instead of its secret key."""
    import time

    from ..cloud.dashboard.session import dashboard_token

    store = _open_store(db)
    try:
        with store.write() as tx:
            token = dashboard_token(tx, account_id, now=time.time(), ttl=days * 86400.0)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(token)


@cloud.command("serve")
@click.option("--db", default=DEFAULT_DB, show_default=True, help="SQLite file or PostgreSQL URL.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4242, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--smtp-url",
    default=None,
    help="Email receipts through this SMTP server (smtp://host:port, smtps://user:pass@host); "
    "without one they wait in the receipt outbox.",
)
@click.option(
    "--public-url",
    default=None,
    help="The address customers reach this cloud at, for receipt pages "
    "(default: http://HOST:PORT).",
)
@click.option(
    "--webhook-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 300),
    help="Seconds a webhook attempt may take. A delivery held by a process that died is "
    "sent by another after three times this.",
)
def serve(
    db: str,
    host: str,
    port: int,
    log_level: str,
    smtp_url: str | None,
    public_url: str | None,
    webhook_timeout: float,
) -> None:
    """Serve the cloud API (Ctrl-C stops it cleanly). Several processes may serve one
    PostgreSQL database behind one address (`docs/scaling.md`)."""
    run_cloud(
        db,
        host,
        port,
        log_level,
        smtp_url=smtp_url,
        public_url=public_url,
        webhook_timeout=webhook_timeout,
    )


def run_cloud(
    db: str,
    host: str,
    port: int,
    log_level: str,
    *,
    smtp_url: str | None = None,
    public_url: str | None = None,
    webhook_timeout: float = 10.0,
) -> None:
    import uvicorn

    from ..cloud import create_app
    from ..cloud.mailer import SmtpUrlError, parse_smtp_url

    if smtp_url is not None:
        try:
            parse_smtp_url(smtp_url)
        except SmtpUrlError as exc:
            raise click.BadParameter(str(exc), param_hint="--smtp-url") from None
    settings = Settings(
        db=db,
        smtp_url=smtp_url,
        public_url=public_url or f"http://{host}:{port}",
        webhook_timeout=webhook_timeout,
    )
    store = _open_store(db)
    with store.read() as tx:
        empty = tx.account_count() == 0
    if empty:
        new = _new_account(store, settings)
        click.echo("A test account was made for this new database:")
        _print_keys(new)
    click.echo(f"Stowpay cloud on http://{host}:{port}  (database: {db})")
    app = create_app(settings, store=store)
    config: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": log_level in ("info", "debug"),
    }
    try:
        uvicorn.run(app, **config)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@main.command()
@click.option(
    "--payments",
    default=0,
    show_default=True,
    type=click.IntRange(0, 100_000),
    help="Extra offline payments, for a large backlog to forward.",
)
@click.option("--keep", is_flag=True, help="Leave the services running at the end (Ctrl-C stops).")
def demo(payments: int, keep: bool) -> None:
    """Stripe's offline guide as a story: a cloud, a reader and a POS on loopback; the
    internet lost and back; every payment forwarded once and reconciled."""
    from ..demo import run_demo

    status = run_demo(payments=payments, keep=keep)
    if status:
        sys.exit(status)


# --- the reader --------------------------------------------------------------------------------

DEFAULT_READER = "http://127.0.0.1:4300"


@main.group()
def reader() -> None:
    """The smart reader: run one, ask it how it is, check its vault."""


def _logs_to_stderr() -> None:
    from .. import logs

    # Log lines go to stderr, so `--json` output on stdout stays machine-readable.
    logs.configure("warning")


@reader.command("run")
@click.option("--cloud", "cloud_url", required=True, help="The cloud's URL.")
@click.option(
    "--data",
    "data_dir",
    default="stowpay-reader",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The reader's data directory (identity, history, vault).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4300, show_default=True, type=click.IntRange(0, 65535))
@click.option("--device-type", default="simulated_wisepos_e", show_default=True)
@click.option("--registration-code", default=None, help="Use this code instead of asking one.")
@click.option(
    "--unattended-forwarding",
    is_flag=True,
    help="Forward stored payments with the device key alone when no POS is connected.",
)
@click.option(
    "--vault-max-records",
    default=100_000,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help="The most offline payments the vault holds before refusing more.",
)
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def reader_run(
    cloud_url: str,
    data_dir: Path,
    host: str,
    port: int,
    device_type: str,
    registration_code: str | None,
    unattended_forwarding: bool,
    vault_max_records: int,
    log_level: str,
) -> None:
    """Run a reader: register, heartbeat, serve the LAN API, forward (Ctrl-C stops it)."""
    from ..reader.daemon import DaemonError, ReaderConfig, run_reader

    config = ReaderConfig(
        cloud_url=cloud_url,
        data_dir=data_dir,
        host=host,
        port=port,
        device_type=device_type,
        registration_code=registration_code,
        unattended_forwarding=unattended_forwarding,
        vault_max_records=vault_max_records,
        log_level=log_level,
    )
    try:
        run_reader(config)
    except DaemonError as exc:
        raise click.ClickException(str(exc)) from None


@reader.command("status")
@click.option("--reader", "reader_url", default=None, help=f"A running reader [{DEFAULT_READER}].")
@click.option(
    "--data",
    "data_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="A stopped reader's data directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def reader_status(reader_url: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Network, offline backlog, next retry and quarantined records of a reader."""
    from ..reader.daemon import OperatorError, fetch_status, status_from_directory
    from ..wire.clock import SystemClock

    if reader_url is not None and data_dir is not None:
        raise click.UsageError("give --reader or --data, not both")
    _logs_to_stderr()
    try:
        if data_dir is not None:
            status = status_from_directory(data_dir, clock=SystemClock())
        else:
            status = fetch_status(reader_url or DEFAULT_READER)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    _print_reader_status(status)


def _print_reader_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    offline = status.get("offline") or {}
    amounts = offline.get("amounts") or {}
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, str]] = []
    if not status.get("registered"):
        rows.append(("registration code", str(status.get("registration_code") or "-")))
    rows += [
        ("reader", str(status.get("reader") or "-")),
        ("account", str(status.get("account") or "-")),
        ("location", str(status.get("location") or "-")),
        ("network", str(status.get("network") or "-")),
        ("offline enabled", "yes" if status.get("offline_enabled") else "no"),
        ("stored payments", str(offline.get("count", "-"))),
        (
            "amounts",
            ", ".join(f"{total} {cur}" for cur, total in sorted(amounts.items())) or "-",
        ),
        ("oldest record age", _age(offline.get("oldest_age"))),
        ("next retry", _when(offline.get("next_retry_at"))),
        ("quarantined", str(offline.get("quarantined", "-"))),
        ("connected POS", str(status.get("connected_pos") or "-")),
    ]
    error = offline.get("last_error")
    if isinstance(error, dict):
        rows.append(("last forwarding error", f"{error.get('code')}: {error.get('message')}"))
    for name, value in rows:
        table.add_row(name, value)
    Console(highlight=False, soft_wrap=True).print(table)


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    value = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}s"


def _when(at: object) -> str:
    if not isinstance(at, int | float):
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(float(at), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@reader.command("forward-now")
@click.option("--reader", "reader_url", default=DEFAULT_READER, show_default=True)
def reader_forward_now(reader_url: str) -> None:
    """Ask a running reader to forward its stored payments now."""
    from ..reader.daemon import OperatorError, request_forward

    _logs_to_stderr()
    try:
        answer = request_forward(reader_url)
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    if answer.get("started"):
        click.echo("Forwarding started.")
    else:
        click.echo("The reader is not registered yet: nothing to forward.")


@reader.group("vault")
def reader_vault() -> None:
    """The reader's offline vault."""


@reader_vault.command("verify")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The reader's data directory.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reader_vault_verify(data_dir: Path, as_json: bool) -> None:
    """Check every record's MAC and link, without decrypting anything (exit 1 on findings)."""
    from ..reader.daemon import OperatorError, verify_vault
    from ..wire.clock import SystemClock

    _logs_to_stderr()
    try:
        report = verify_vault(data_dir, clock=SystemClock())
    except OperatorError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(
            f"Checked {report.checked} records: {report.valid} valid "
            f"(sequences up to {report.head_sequence})."
        )
        for finding in report.findings:
            where = "" if finding.sequence is None else f" #{finding.sequence}"
            click.echo(f"  {finding.kind}{where}: {finding.detail}")
        for held in report.quarantined:
            click.echo(f"  quarantined #{held.sequence}: {held.kind}: {held.detail}")
        click.echo("OK" if report.ok else "FINDINGS: see above")
    if not report.ok:
        sys.exit(1)


@main.command("reconcile")
@click.option("--since", default=None, help="7d, 24h, YYYY-MM-DD, ISO 8601 time [30 days].")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--api-base", envvar="STOWPAY_API_BASE", default="http://127.0.0.1:4242", show_default=True
)
@click.option("--api-key", envvar="STOWPAY_API_KEY", default=None, help="[$STOWPAY_API_KEY]")
@click.option("--export-day", default=None, help="Write the signed audit export of a UTC day.")
@click.option("--verify", "verify_file", default=None, type=click.Path(path_type=Path))
@click.option("--public-key", default=None, help="The cloud's audit key (hex) for --verify.")
@click.option("-o", "--output", default=None, type=click.Path(path_type=Path))
def reconcile_cmd(
    since: str | None,
    fmt: str,
    api_base: str,
    api_key: str | None,
    export_day: str | None,
    verify_file: Path | None,
    public_key: str | None,
    output: Path | None,
) -> None:
    """Orders, PaymentIntents, charges and webhooks side by side; what readers still hold,
    what was declined after forwarding, and gaps in readers' sequences (docs: README)."""
    from ..cloud import reconcile
    from . import _reconcile as rc

    try:
        if verify_file is not None:
            if public_key is None:
                if api_key is None:
                    raise rc.ReconcileError("give --public-key, or --api-key to fetch it")
                public_key = rc.public_key(api_base, api_key)
            try:
                data = verify_file.read_bytes()
            except OSError as exc:
                raise rc.ReconcileError(f"cannot read {verify_file}: {exc.strerror}") from None
            sig = reconcile.verify_export(data, public_key)
            click.echo(
                f"OK: {sig['count']} offline payment(s) of {sig['account']} on {sig['day']}, "
                f"signed by {public_key[:16]}..."
            )
            return
        if api_key is None:
            raise rc.ReconcileError("give --api-key or set STOWPAY_API_KEY")
        if export_day is not None:
            reconcile.parse_day(export_day)
            body = rc.fetch(api_base, api_key, f"/v1/stowpay/audit_exports/{export_day}")
            text = body.decode()
        else:
            found = rc.report(api_base, api_key, since)
            if fmt == "json":
                text = json.dumps(found, indent=2)
            elif fmt == "csv":
                text = rc.as_csv(found)
            else:
                text = rc.as_table(found)
    except (rc.ReconcileError, reconcile.ExportError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if output is not None:
        output.write_text(text if text.endswith("\n") else text + "\n")
        click.echo(f"Wrote {output}")
    else:
        click.echo(text.rstrip("\n"))


@main.command()
@click.option("--seeds", default=100, show_default=True, type=click.IntRange(1, None))
@click.option(
    "--start", default=0, show_default=True, type=click.IntRange(0, None), help="First seed."
)
@click.option(
    "--seed", "one_seed", default=None, type=click.IntRange(0, None), help="Run this seed only."
)
@click.option(
    "--plant",
    type=click.Choice(["cloud_forgets", "remove_first"]),
    default=None,
    help="Plant a known bug, to see the checker catch it.",
)
def simulate(seeds: int, start: int, one_seed: int | None, plant: str | None) -> None:
    """Run the deterministic fault simulation: POS, reader and cloud in one process under a
    seeded fault schedule; each payment checked ok / lost / duplicated / stuck (exit 1 on any
    failing seed). See docs/reliability.md."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .. import logs
    from ..sim.runner import Runner, RunResult

    logs.configure("critical")  # the reader's warnings are the simulation's everyday weather
    console = Console(stderr=True)
    chosen = range(one_seed, one_seed + 1) if one_seed is not None else range(start, start + seeds)
    with Runner() as runner:
        if one_seed is not None:
            summary = runner.run(chosen, plant=plant)
            last = runner.last
            assert last is not None
            click.echo(f"seed {one_seed}: trace {last.trace_hash}")
            click.echo(f"  options: {last.options.describe()}")
        else:
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as bar:
                task = bar.add_task("simulating", total=len(chosen))

                def advance(result: RunResult) -> None:
                    bar.update(task, advance=1, description=f"seed {result.seed}")

                summary = runner.run(chosen, plant=plant, progress=advance)
    click.echo(summary.line())
    for result in summary.failures[:3]:
        click.echo(result.report())
    if summary.failures:
        seeds_failed = ", ".join(str(r.seed) for r in summary.failures[:20])
        again = "stowpay simulate --seed N" + (f" --plant {plant}" if plant else "")
        click.echo(f"FAILED seeds: {seeds_failed}; rerun one with: {again}")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
