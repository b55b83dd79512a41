"""The API's routes, one module per resource. Importing this package registers them all."""

from . import (  # noqa: F401
    charges,
    events,
    payment_intents,
    payment_methods,
    refunds,
    terminal,
    webhook_endpoints,
)
