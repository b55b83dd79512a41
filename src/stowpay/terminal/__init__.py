"""The Stowpay Terminal SDK: take card payments through a reader, online or offline.

Names mirror Stripe Terminal's (see docs/sdk.md for the offline guide's steps with them)::

    terminal = Terminal(token_provider=Tokens(), offline_listener=Events(), data_dir="pos-data")
    reader = terminal.connect_reader(terminal.discover_readers(DiscoveryConfiguration())[0])
    pi = terminal.create_payment_intent(PaymentIntentParameters(amount=1299, currency="usd"))
    pi = terminal.confirm_payment_intent(terminal.collect_payment_method(pi))
"""

from ..wire.terminal_codes import ErrorCode
from ._async import AsyncTerminal
from ._errors import TerminalException
from ._listener import ConnectionTokenProvider, OfflineListener
from ._models import (
    CollectConfiguration,
    CreateConfiguration,
    DiscoveryConfiguration,
    DiscoveryMethod,
    NetworkStatus,
    OfflineBehavior,
    OfflineCardPresentDetails,
    OfflineDetails,
    OfflineStatus,
    OfflineStatusDetails,
    PaymentIntent,
    PaymentIntentParameters,
    Reader,
    ReceiptDetails,
    SimulatedCard,
)
from ._receipt import format_receipt
from ._risk import OfflineRiskPolicy
from ._terminal import Terminal

__all__ = [
    "AsyncTerminal",
    "CollectConfiguration",
    "ConnectionTokenProvider",
    "CreateConfiguration",
    "DiscoveryConfiguration",
    "DiscoveryMethod",
    "ErrorCode",
    "NetworkStatus",
    "OfflineBehavior",
    "OfflineCardPresentDetails",
    "OfflineDetails",
    "OfflineListener",
    "OfflineRiskPolicy",
    "OfflineStatus",
    "OfflineStatusDetails",
    "PaymentIntent",
    "PaymentIntentParameters",
    "Reader",
    "ReceiptDetails",
    "SimulatedCard",
    "Terminal",
    "TerminalException",
    "format_receipt",
]
