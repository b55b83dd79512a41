"""The smart reader's core: offline rules, the sealed vault, the forwarder.

A library with no HTTP inside. The reader daemon wraps it in a LAN server; the SDK runs the
same core in-process for a mobile reader or an app on the reader itself.
"""
