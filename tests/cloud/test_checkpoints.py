"""The cloud checkpoints a SQLite store's WAL off the request path, on a thread of its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from stowpay.cloud import create_app
from stowpay.cloud.domain.accounts import create_account
from stowpay.cloud.settings import Settings

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("background", [True, False])
def test_written_pages_reach_the_database_file_between_requests(
    tmp_path: Path, background: bool
) -> None:
    db = tmp_path / "cloud.db"
    app = create_app(Settings(db=str(db), background=background, checkpoint_interval=0.05))
    cloud = app.state.cloud
    with TestClient(app) as client:
        with cloud.store.write() as tx:
            key = create_account(tx, cloud.settings.clock, cloud.settings.ids).secret_key
        time.sleep(0.3)  # the round for the account, if any
        before = db.stat().st_size
        for n in range(20):
            created = client.post(
                "/v1/payment_intents",
                content=f"amount={1000 + n}&currency=usd&description={'x' * 300}".encode(),
                headers={**FORM, "Authorization": f"Bearer {key}"},
            )
            assert created.status_code == 200
        # 20 requests write far fewer WAL pages than a commit's own checkpoint waits for
        # (`WAL_AUTOCHECKPOINT`): only the checkpoint thread copies them this soon.
        deadline = time.monotonic() + (5 if background else 1)
        while db.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.05)
        grew = db.stat().st_size > before
    cloud.store.close()
    assert grew is background
