"""`pystacker chaos`: the fault harness from the command line.

Exit code 0: every scenario reported zero lost, zero shown twice, zero out of order (and met its own
bounds); 1: a scenario found a problem; 2: the harness could not run.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from pystacker_tools.chaos import SCENARIO_NAMES

DEFAULT_DATABASE = "mysql+asyncmy://root:@127.0.0.1:3306/mysql"  # the server; the harness makes its own database


@click.command("chaos")
@click.option("--scenario", "scenarios", multiple=True, default=("all",), show_default=True,
              type=click.Choice(["all", *SCENARIO_NAMES]), help="Scenario to run (repeatable); `all` runs every one in order.")
@click.option("--long", "long_run", is_flag=True, envvar="PYSTACKER_CHAOS_LONG",
              help="The long versions: more clients, 1,000 in the reconnect storm, a 30 s SQL outage "
                   "(environment: PYSTACKER_CHAOS_LONG=1).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results here.")
@click.option("--database", "database_server", default=DEFAULT_DATABASE, show_default=True,
              envvar="PYSTACKER_CHAOS_DATABASE",
              help="SQLAlchemy URL of a MariaDB/MySQL or PostgreSQL server; a scratch database is created "
                   "there and dropped at the end (statement counts need MariaDB/MySQL).")
@click.option("--config-dir", default="config", show_default=True, type=click.Path(file_okay=False, exists=True),
              help="Folder with the config.<service>.yaml files of the deployment.")
@click.option("--log-dir", default=None, help="Where each process writes its output (default logs/chaos-<time>).")
@click.option("--quiet", is_flag=True, help="Only the report.")
def chaos(scenarios: tuple[str, ...], long_run: bool, json_path: str | None, database_server: str, config_dir: str,
          log_dir: str | None, quiet: bool) -> None:
    """Run a steady group-chat load against a local distributed deployment of its own and inject
    faults one at a time; every message must reach every member exactly once, in seq order."""
    # Imported here: `pystacker --help` loads this module to list the command, not the harness.
    from pystacker_tools.chaos.runner import ChaosOptions, run_chaos

    chosen = list(SCENARIO_NAMES) if "all" in scenarios else list(dict.fromkeys(scenarios))
    options = ChaosOptions(chosen, long=long_run, json_path=Path(json_path) if json_path else None,
                           database_server=database_server, config_dir=Path(config_dir),
                           log_dir=Path(log_dir) if log_dir else None, quiet=quiet)
    try:
        verdicts = asyncio.run(run_chaos(options))
    except KeyboardInterrupt:
        sys.exit(2)
    except Exception as exc:  # the deployment could not start, the database server is not there, ...
        click.echo(f"pystacker chaos: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
    sys.exit(0 if all(v.ok for v in verdicts) else 1)
