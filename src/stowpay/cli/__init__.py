"""The `stowpay` command: a thin layer over the library."""

from .main import main

__all__ = ["main"]
