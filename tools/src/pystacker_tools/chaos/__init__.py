"""The fault harness (`pystacker chaos`, tests/test_chaos.py): a steady group-chat load with an
integrity checker against a local distributed deployment of its own, while faults are injected one
at a time. See docs/reliability.md.

- launcher.py: free ports, a private redis-server, a scratch database (shared with the test suite);
- deployment.py: the deployment (pystacker.cluster's launcher) with the SQL fault proxy in front of
  its database, killing and restarting members by PID;
- proxy.py: the TCP fault proxy (outages, statement counts, the flusher's mid-batch trap);
- load.py: receivers that dedup, senders that retry with the same client_msg_id, the ledger;
- traffic.py: a scenario's rooms, clients and load, and its verdict;
- scenarios.py: the faults; report.py: the table and JSON; runner.py, cli.py: the command.
"""

# In run order; scenarios.SCENARIOS maps each to its function (kept apart so that the CLI can list
# them without importing the harness).
SCENARIO_NAMES = ("gateway-kill", "send-kill", "flusher-kill", "msgflusher-kill", "redis-restart", "sql-outage",
                  "reconnect-storm", "slow-consumers")
