"""`stowpay demo`: the offline guide as a story, with real processes on loopback."""

from ._story import run_demo

__all__ = ["run_demo"]
