"""The `pystacker` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from pystacker import __version__, event_loop
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
        raise AssertionError("unreachable") from exc


def _setup_logging(config: Config) -> None:
    setup_logging(config.log)
    # Alembic announces its dialect at INFO on every schema check; the line that matters (schema
    # ready, or "run `pystacker db upgrade`") is ours, and a startup error must stay one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run the event loop (uvloop when present); startup problems end in one line, not a traceback."""
    try:
        event_loop.run(main())
    except StartupError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="YAML config file (GoStacker's key names). Environment: PYSTACKER_<SECTION>__<KEY>.")


COMMANDS_GROUP = "pystacker.commands"  # entry points of other distributions' commands (pystacker-tools)


class Commands(click.Group):
    """The product's own commands, and those other distributions register under the entry-point group
    `pystacker.commands` (pystacker-tools: `bench`, `chaos`). One of those is imported only to run it
    or to list every command (`pystacker --help`), so a service's process never imports the tools;
    a command of the product's own wins over an entry point of the same name."""

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {point.name: point for point in entry_points(group=COMMANDS_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        point = self._entry_points().get(cmd_name)
        if point is None:
            return None
        loaded = point.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"entry point {point.value} ({COMMANDS_GROUP}) is not a click command")
        return loaded


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
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

    # Command-line values win over the environment and the file.
    overrides: dict[str, Any] = {"engine": "memory"}
    if data_dir:
        overrides["data_dir"] = data_dir
    if host:
        overrides["host"] = host
    config = _load(config_path, overrides)
    if "host" not in config.model_fields_set:
        config.host = "127.0.0.1"  # one machine, one user: not on every interface unless asked
    _setup_logging(config)
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


def _service_command(name: str, summary: str, default_port: int) -> click.Command:
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=f"config.{name}.yaml",
                  show_default=True, help="YAML config file (GoStacker's key names).")
    def command(config_path: str) -> None:
        from pystacker.services import SERVICES, run_service

        config = _load(config_path)
        _setup_logging(config)
        _run(lambda: run_service(SERVICES[name], config, config_path))

    port = f" (port {default_port})" if default_port else ""
    return click.command(name, help=f"Run the {name} service: {summary}{port}.")(command)


def _add_service_commands() -> None:
    from pystacker.services import SERVICES

    for spec in SERVICES.values():
        main.add_command(_service_command(spec.name, spec.summary, spec.default_port))


_add_service_commands()


@main.command()
@click.option("--gateways", default=2, show_default=True, type=click.IntRange(1, 6), help="Gateway processes.")
@click.option("--send", "sends", default=2, show_default=True, type=click.IntRange(1, 8), help="Send processes.")
@click.option("--config-dir", default="config", show_default=True, type=click.Path(file_okay=False, exists=True),
              help="Folder with config.<service>.yaml files.")
@click.option("--log-dir", default="logs/cluster", show_default=True, help="Where each process writes its output.")
@click.option("--port-offset", default=0, show_default=True, type=click.IntRange(0, 50000),
              help="Add this to every port (GoStacker's 8081-8085, 8091+, metrics 9101/9102): a second cluster beside the first.")
def cluster(gateways: int, sends: int, config_dir: str, log_dir: str, port_offset: int) -> None:
    """Run a local distributed deployment: every service as its own process (Redis + SQL)."""
    from pathlib import Path

    from pystacker.cluster import run_cluster

    code = asyncio.run(run_cluster(Path(config_dir), gateways=gateways, sends=sends, log_dir=Path(log_dir),
                                   port_offset=port_offset))
    sys.exit(code)


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: str | None) -> None:
    """Create the database if missing, then apply the migrations up to the newest schema."""
    from pystacker.db import migrate
    from pystacker.db.create import ensure_database
    from pystacker.db.engine import create_engine
    from pystacker.runtime import safe_url

    config = _load(config_path)
    url = config.database_url()

    async def main_task() -> None:
        try:
            if await ensure_database(url):
                click.echo(f"{safe_url(url)}: database created")
        except Exception as exc:
            raise StartupError(f"cannot create {safe_url(url)}: {str(exc).strip().splitlines()[0]}") from None
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine)
            click.echo(f"{safe_url(url)}: schema at revision {await migrate.current_revision(engine)}")
        except Exception as exc:
            raise StartupError(f"cannot migrate {safe_url(url)}: {str(exc).strip().splitlines()[0]}") from None
        finally:
            await engine.dispose()

    _run(main_task)


@main.command()
@click.option("--meta", "meta_url", default="http://127.0.0.1:8082", show_default=True, envvar="PYSTACKER_META_URL",
              help="Meta service URL.")
@click.option("--send", "send_url", default="http://127.0.0.1:8081", show_default=True, envvar="PYSTACKER_SEND_URL",
              help="Send service URL.")
@click.option("--registry", "registry_url", default="http://127.0.0.1:8083", show_default=True,
              envvar="PYSTACKER_REGISTRY_URL", help="Registry URL (it tells which gateway to use).")
@click.option("--user", "username", prompt="Username", help="Your username.")
@click.option("--password", prompt=True, hide_input=True, envvar="PYSTACKER_PASSWORD",
              help="Your password (prompted for when missing; environment: PYSTACKER_PASSWORD).")
@click.option("--register", is_flag=True, help="Create the account first (an existing one is just logged in).")
@click.option("--nickname", default="", help="Nickname for --register.")
@click.option("--room", type=click.IntRange(min=1), default=None, help="Room to select at start.")
@click.option("--device", "device_id", default=None, envvar="PYSTACKER_DEVICE_ID",
              help="This device's id (1-64 printable characters): several terminals of one user stay online "
                   "together, each with its own place in every room. None: the user's default device.")
def chat(meta_url: str, send_url: str, registry_url: str, username: str, password: str, register: bool,
         nickname: str, room: int | None, device_id: str | None) -> None:
    """Chat in the terminal: /help lists the commands, any other line goes to the current room."""
    from pystacker.client.terminal import run_chat

    exit_code = 0

    async def main_task() -> None:
        nonlocal exit_code
        exit_code = await run_chat({"meta": meta_url, "send": send_url, "registry": registry_url}, username,
                                   password, register=register, nickname=nickname, room=room, device_id=device_id)

    _run(main_task)
    sys.exit(exit_code)
