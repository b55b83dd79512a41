"""Table definitions. Objects are stored as JSON documents beside the columns they are found by."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    # Only a hash of the secret key is kept: a copied database gives no API access.
    sa.Column("secret_key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("publishable_key", sa.String(128), nullable=False, unique=True),
    sa.Column("body", sa.Text, nullable=False),
)

# Every API object of every account. `seq` orders lists newest first and makes cursors stable.
objects = sa.Table(
    "objects",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("id", sa.String(128), nullable=False, unique=True),  # 64 before migration 7
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("ref", sa.String(64)),  # parent: a charge's payment_intent, a reader's location
    sa.Column("status", sa.String(40)),
    sa.Column("amount", sa.BigInteger),
    sa.Column("body", sa.Text, nullable=False),
    sa.Index("objects_by_type", "account_id", "type", "seq"),
    # Only objects that have a parent (migration 8): every lookup names one, and a
    # PaymentIntent or PaymentMethod then writes no entry, one index page less per request.
    sa.Index(
        "objects_by_ref",
        "account_id",
        "ref",
        "type",
        sqlite_where=sa.text("ref IS NOT NULL"),
        postgresql_where=sa.text("ref IS NOT NULL"),
    ),
)

object_metadata = sa.Table(
    "object_metadata",
    metadata,
    sa.Column("object_id", sa.String(128), primary_key=True),  # 64 before migration 7
    sa.Column("key", sa.String(40), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("value", sa.String(500), nullable=False),
    sa.Index("metadata_lookup", "account_id", "type", "key", "value"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("account_id", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)
# PostgreSQL also has `idempotency_by_age` on `created` (migration 8). SQLite finds expired
# keys in rowid order instead (`Tx.idempotency_prune`): one index page less per POST.

# Transactional outbox of webhook deliveries: written in the same transaction as the event.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(64), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float),
    sa.Column("last_attempt_at", sa.Float),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.String(500)),
    sa.Index("deliveries_due", "state", "next_attempt_at"),
    sa.Index("deliveries_by_event", "account_id", "event_id"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("delivery_id", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("status", sa.Integer),
    sa.Column("error", sa.String(500)),
    sa.Column("duration_ms", sa.Float, nullable=False),
)

# Secrets of the cloud itself (the private half of the readers' sealing key). Never served.
cloud_secrets = sa.Table(
    "cloud_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("value", sa.LargeBinary, nullable=False),
)

# Codes a reader shows on its screen before it belongs to any account (migration 2). Only a
# hash of the code is kept; once a merchant registers it, the row records which account and
# reader it became, so the device can learn that, and a code is never redeemed twice.
terminal_registrations = sa.Table(
    "terminal_registrations",
    metadata,
    sa.Column("code_hash", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("device", sa.Text, nullable=False),  # JSON: type, serial, software, address
    sa.Column("account_id", sa.String(64)),
    sa.Column("reader_id", sa.String(64)),
    sa.Column("redeemed_at", sa.Float),
    sa.Index("terminal_registrations_by_expiry", "expires_at"),
)

# Connection tokens (migration 2): a hash of the secret, whose account and location it speaks
# for, and until when. A row is removed when the token is redeemed: each is good for one use.
terminal_connection_tokens = sa.Table(
    "terminal_connection_tokens",
    metadata,
    sa.Column("secret_hash", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("location", sa.String(64)),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("terminal_connection_tokens_by_expiry", "expires_at"),
)

# Readers' own credentials (migration 4): a hash of each device key and the (account, reader)
# it speaks for. One live key per reader: activating again replaces the row, so the older key
# stops working at once.
terminal_device_keys = sa.Table(
    "terminal_device_keys",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("reader_id", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
)

# Email receipts waiting to go, or gone (migration 5): a transactional outbox like
# `webhook_deliveries`, written in the transaction of the capture or refund it reports.
# `dedup_key` (charge or refund, and address) makes each receipt exist once.
receipt_emails = sa.Table(
    "receipt_emails",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("charge_id", sa.String(64), nullable=False),
    sa.Column("refund_id", sa.String(64)),
    sa.Column("kind", sa.String(16), nullable=False),  # payment | refund
    sa.Column("dedup_key", sa.String(400), nullable=False, unique=True),
    sa.Column("to_address", sa.String(320), nullable=False),
    sa.Column("receipt_number", sa.String(32), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | sent | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.Float),
    sa.Column("last_attempt_at", sa.Float),
    sa.Column("last_error", sa.String(500)),
    sa.Column("sent_at", sa.Float),
    sa.Index("receipt_emails_due", "state", "next_attempt_at"),
    sa.Index("receipt_emails_by_charge", "account_id", "charge_id"),
)

# Receipt pages (migration 5): a hash of each page's unguessable token, and whose charge it
# shows. The page needs no key; the token in its address is the only way in.
receipt_pages = sa.Table(
    "receipt_pages",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("charge_id", sa.String(64), nullable=False),
)

# What readers reported of their offline backlog over time (migration 6): one row per
# heartbeat that changed it, or per minute at most otherwise; the dashboard charts it.
reader_samples = sa.Table(
    "reader_samples",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("reader_id", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("stored_count", sa.Integer, nullable=False),
    sa.Column("amounts", sa.Text, nullable=False),  # JSON: currency -> minor units
    sa.Column("oldest_stored_at", sa.Float),
    sa.Index("reader_samples_by_account", "account_id", "at"),
)
