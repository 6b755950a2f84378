"""The `pystacker` command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click

from pystacker import __version__
from pystacker.config import Config, ConfigError, load_config
from pystacker.logs import setup_logging
from pystacker.runtime import StartupError


def _fail(message: str) -> None:
    click.echo(f"pystacker: {message}", err=True)
    sys.exit(2)


def _load(path: str | None, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(path, overrides=overrides)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
        raise AssertionError("unreachable")


def _run(main: Callable[[], Awaitable[None]]) -> None:
    """Run the event loop (uvloop when present); startup problems end in one line, not a traceback."""
    try:
        import uvloop

        runner: Callable[[Awaitable[None]], None] = uvloop.run  # type: ignore[assignment]
    except ImportError:
        runner = asyncio.run
    try:
        runner(main())
    except StartupError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML config file (GoStacker's key names). Environment: PYSTACKER_<SECTION>__<KEY>.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """PyStacker: a distributed IM server, wire-compatible with GoStacker."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"pystacker {__version__}")


@main.command()
@config_option
@click.option("--data-dir", default=None, help="Where the SQLite file and the JWT secret live (default ./data).")
@click.option("--host", default=None, help="Interface to listen on (default 127.0.0.1).")
def up(config_path: str | None, data_dir: str | None, host: str | None) -> None:
    """Run the whole system in one process: embedded engine and SQLite, no server to install."""
    from pystacker.embedded import EmbeddedSystem
    from pystacker.web.server import run_until_signalled

    overrides: dict[str, Any] = {"engine": "memory"}
    if data_dir:
        overrides["data_dir"] = data_dir
    config = _load(config_path, overrides)
    if host:
        config.host = host
    elif config_path is None or "host" not in (load_config(config_path).model_fields_set):
        config.host = "127.0.0.1"
    setup_logging(config.log)
    system = EmbeddedSystem(config)

    async def start() -> None:
        await system.start()
        click.echo("PyStacker is up:")
        for name, url in system.urls.items():
            click.echo(f"  {name:<9} {url}")
        click.echo("Press Ctrl-C to stop.")

    async def main_task() -> None:
        await run_until_signalled(start, system.stop)

    _run(main_task)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default="config.meta.yaml",
              show_default=True, help="YAML config file.")
def meta(config_path: str) -> None:
    """Run the meta service (users, rooms, members; port 8082)."""
    from pystacker.meta.app import build_meta_app
    from pystacker.runtime import Runtime
    from pystacker.web.server import Listener, Servers, bind_socket, run_until_signalled

    config = _load(config_path)
    setup_logging(config.log)

    async def main_task() -> None:
        runtime = Runtime(config, source=config_path)
        servers = Servers()

        async def start() -> None:
            await runtime.open_sql(migrate_to_head=False)
            await servers.start([Listener("meta", build_meta_app(runtime), bind_socket(config.host, config.port or 8082))])
            click.echo(f"meta listening on {config.host}:{servers.bound['meta']}")

        async def stop() -> None:
            await servers.stop()
            await runtime.close()

        await run_until_signalled(start, stop)

    _run(main_task)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: str | None) -> None:
    """Apply the migrations up to the newest schema."""
    from pystacker.db import migrate
    from pystacker.db.engine import create_engine
    from pystacker.runtime import safe_url

    config = _load(config_path)
    url = config.database_url()

    async def main_task() -> None:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            click.echo(f"{safe_url(url)}: schema at revision {await migrate.current_revision(engine)}")
        except Exception as exc:
            raise StartupError(f"cannot migrate {safe_url(url)}: {str(exc).strip().splitlines()[0]}") from None
        finally:
            await engine.dispose()

    _run(main_task)
