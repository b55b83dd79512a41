"""`AsyncTerminal`: the same calls as `Terminal`, as coroutines (each runs in a worker thread)."""

from __future__ import annotations

import asyncio
import os

from ._listener import ConnectionTokenProvider, OfflineListener
from ._models import (
    CollectConfiguration,
    CreateConfiguration,
    DiscoveryConfiguration,
    OfflineStatus,
    PaymentIntent,
    PaymentIntentParameters,
    Reader,
)
from ._risk import OfflineRiskPolicy
from ._terminal import Terminal


class AsyncTerminal:
    """`Terminal` for asyncio apps: each blocking call runs in a thread, the loop stays free.

    Listener callbacks still come from the SDK's own thread; hand them to the loop with
    ``loop.call_soon_threadsafe`` if they touch loop objects.
    """

    def __init__(
        self,
        token_provider: ConnectionTokenProvider,
        offline_listener: OfflineListener | None = None,
        *,
        api_base: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        offline_risk_policy: OfflineRiskPolicy | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        #: the blocking terminal underneath (its `simulated_card` is used at collect)
        self.terminal = Terminal(
            token_provider,
            offline_listener,
            api_base=api_base,
            data_dir=data_dir,
            offline_risk_policy=offline_risk_policy,
            request_timeout=request_timeout,
        )

    async def discover_readers(self, config: DiscoveryConfiguration | None = None) -> list[Reader]:
        """`Terminal.discover_readers`."""
        return await asyncio.to_thread(self.terminal.discover_readers, config)

    async def connect_reader(self, reader: Reader, location: str | None = None) -> Reader:
        """`Terminal.connect_reader`."""
        return await asyncio.to_thread(self.terminal.connect_reader, reader, location)

    async def disconnect_reader(self) -> None:
        """`Terminal.disconnect_reader`."""
        await asyncio.to_thread(self.terminal.disconnect_reader)

    async def create_payment_intent(
        self, params: PaymentIntentParameters, config: CreateConfiguration | None = None
    ) -> PaymentIntent:
        """`Terminal.create_payment_intent`."""
        return await asyncio.to_thread(self.terminal.create_payment_intent, params, config)

    async def collect_payment_method(
        self, payment_intent: PaymentIntent, config: CollectConfiguration | None = None
    ) -> PaymentIntent:
        """`Terminal.collect_payment_method`."""
        return await asyncio.to_thread(self.terminal.collect_payment_method, payment_intent, config)

    async def confirm_payment_intent(self, payment_intent: PaymentIntent) -> PaymentIntent:
        """`Terminal.confirm_payment_intent`."""
        return await asyncio.to_thread(self.terminal.confirm_payment_intent, payment_intent)

    async def cancel_payment_intent(self, payment_intent: PaymentIntent) -> PaymentIntent:
        """`Terminal.cancel_payment_intent`."""
        return await asyncio.to_thread(self.terminal.cancel_payment_intent, payment_intent)

    async def capture_payment_intent(
        self, payment_intent: PaymentIntent, amount_to_capture: int | None = None
    ) -> PaymentIntent:
        """`Terminal.capture_payment_intent`."""
        return await asyncio.to_thread(
            self.terminal.capture_payment_intent, payment_intent, amount_to_capture
        )

    async def get_offline_status(self) -> OfflineStatus:
        """`Terminal.get_offline_status`."""
        return await asyncio.to_thread(self.terminal.get_offline_status)

    async def close(self) -> None:
        """`Terminal.close`."""
        await asyncio.to_thread(self.terminal.close)
