"""PyStacker's tools, a distribution of their own beside the product (pystacker-tools, tools/):

- `bench/`: `pystacker bench`, the load generator and integrity checker (docs/bench.md);
- `chaos/`: `pystacker chaos`, the fault harness (docs/reliability.md).

The `pystacker` command finds both through the entry-point group `pystacker.commands` and imports them
only to run them, so no service's process loads them. They use the product through the SDK
(`pystacker.client`), the launcher of `pystacker cluster` and `pystacker.testing`, nothing else.
"""

__version__ = "0.1.0"
