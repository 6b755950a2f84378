"""`pystacker bench`: a load generator and integrity checker for GoStacker-compatible servers.

It speaks only the public HTTP and WebSocket API (meta, send, registry, gateway), so the same command
measures PyStacker (embedded or distributed) and any other server with GoStacker's contract.

Modules, one job each:
  safety.py     loopback-only targets, file-descriptor limit
  tags.py       the text every bench message carries (run, step, sender, number, send time)
  histogram.py  bounded, mergeable latency histogram
  checker.py    integrity: lost, duplicates, per-room and per-sender order, latency
  targets.py    the servers of a run (several send instances), and the SDK client of a setup call
  setup.py      users and rooms through the SDK (pystacker.client), with bounded concurrency
  clients.py    WebSocket receivers (arrival times) and senders (HTTP or WebSocket `send` frame)
  worker.py     one client process: receivers and senders for its share of the users
  fleet.py      the client processes seen from the parent: commands, shared counters, progress
  procfs.py     server CPU and memory from /proc, machine description, git commit
  server.py     `--embedded`: `pystacker up` in a subprocess on free ports
  workloads.py  fanout, pairs, idle, catchup
  rawlimit.py   the box's ceiling: one picows writer process, local receivers; each report's ratio to it
  report.py     JSON, table and PNG plot
  cli.py        the `pystacker bench` commands
"""
