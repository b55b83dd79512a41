"""The Stripe wire format, shared by every part of Stowpay.

Nothing here imports the cloud, the reader or the SDK: form bodies, ids, errors, money,
webhook signatures, clocks and test cards are facts about the protocol, not about a part.
"""
