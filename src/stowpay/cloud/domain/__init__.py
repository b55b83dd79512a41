"""What the cloud does, apart from HTTP: accounts, payments, the issuer, events.

Functions here take a `Context` (account, transaction, clock, ids) and plain values, and
return objects as dicts in Stripe's shape. Keys starting with `_` are private and never served.
"""
