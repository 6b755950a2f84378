"""PyStacker: a distributed instant-messaging server, wire-compatible with GoStacker."""

__version__ = "0.1.0"
