"""The cloud: Stowpay's payments platform, speaking Stripe's API under `/v1`."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
