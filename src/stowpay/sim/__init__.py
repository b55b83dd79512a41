"""Fault simulation: tools that break things on purpose, to show nothing is lost or doubled."""
