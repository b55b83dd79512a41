"""`stowpay`: serve the cloud, make accounts, run the demo."""

from __future__ import annotations

import json
import sys
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
def serve(db: str, host: str, port: int, log_level: str) -> None:
    """Serve the cloud API (Ctrl-C stops it cleanly)."""
    run_cloud(db, host, port, log_level)


def run_cloud(db: str, host: str, port: int, log_level: str) -> None:
    import uvicorn

    from ..cloud import create_app

    settings = Settings(db=db)
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
@click.option("--db", default=DEFAULT_DB, show_default=True, help="SQLite file or PostgreSQL URL.")
@click.option("--port", default=4242, show_default=True, type=click.IntRange(0, 65535))
def demo(db: str, port: int) -> None:
    """Run the cloud on loopback with a test account, ready for curl or the stripe client."""
    run_cloud(db, "127.0.0.1", port, "warning")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
