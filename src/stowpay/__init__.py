"""Stowpay: offline-first card payments, from the till to the platform."""

__version__ = "0.1.0"
