from __future__ import annotations

import pytest

from stowpay.cloud.testing import LiveCloud


@pytest.fixture
def cloud(any_cloud: LiveCloud) -> LiveCloud:
    """Here the cloud is tested on each store: once over SQLite, once over PostgreSQL."""
    return any_cloud
