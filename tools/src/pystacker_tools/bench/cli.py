"""`pystacker bench fanout|pairs|idle|catchup|rawlimit`: options, then run, write, plot, print; `plot`:
several runs' figures against what varied between them.

Exit code 0: the run completed and its integrity checks passed; 1: it completed but found lost,
duplicated or reordered messages (or failed sends/connections); 2: it could not run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pystacker_tools.bench import scaling

DEFAULT_META = "http://127.0.0.1:8082"  # GoStacker's ports
DEFAULT_SEND = "http://127.0.0.1:8081"
DEFAULT_REGISTRY = "http://127.0.0.1:8083"


def _pids(values: tuple[str, ...]) -> list[int]:
    pids = []
    for value in values:
        for part in value.split(","):
            if part.strip():
                try:
                    pids.append(int(part))
                except ValueError:
                    raise click.BadParameter(f"not a process id: {part!r}", param_hint="--server-pid") from None
    return pids


def _rates(value: str | None) -> list[float] | None:
    if not value:
        return None
    try:
        rates = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas: {value!r}", param_hint="--rate") from None
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter("rates must be positive", param_hint="--rate")
    return rates


def _env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE: {value!r}", param_hint="--server-env")
        env[key] = val
    return env


def common_options(duration: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options every workload shares (targets, safety, processes, bounds, output)."""
    options = [
        click.option("--meta", "meta_url", default=DEFAULT_META, show_default=True, help="Meta service URL."),
        click.option("--send", "send_url", default=DEFAULT_SEND, show_default=True,
                     help="Send service URL, or several separated by commas (each room uses one)."),
        click.option("--registry", "registry_url", default=DEFAULT_REGISTRY, show_default=True,
                     help="Registry URL (it names the gateway of each user)."),
        click.option("--embedded", is_flag=True,
                     help="Start `pystacker up` in a subprocess on free ports with a temporary data folder, "
                          "measure it, stop it (its pid is added to --server-pid)."),
        click.option("--server-env", multiple=True, metavar="KEY=VALUE",
                     help="Environment for the --embedded server, e.g. PYSTACKER_LOG__LEVEL=warning (repeatable)."),
        click.option("--allow-remote", is_flag=True, help="Allow targets that are not on this machine."),
        click.option("--server-pid", multiple=True, metavar="PID[,PID...]",
                     help="Server processes whose CPU time and memory are measured (repeatable)."),
        click.option("--client-procs", default=1, show_default=True, type=click.IntRange(1, 64),
                     help="Client processes sharing the users and senders."),
        click.option("--duration", default=duration, show_default=True, type=click.FloatRange(0.1, 3600),
                     help="Seconds of each measured step (idle: hold time; catchup: longest wait)."),
        click.option("--max-messages", default=200_000, show_default=True, type=click.IntRange(1),
                     help="At most this many sends per step."),
        click.option("--grace", default=10.0, show_default=True, type=click.FloatRange(0, 600),
                     help="Seconds to wait for outstanding deliveries after sending stops; later ones are lost."),
        click.option("--results", "results_dir", default="bench-results", show_default=True,
                     type=click.Path(file_okay=False), help="Folder for the JSON, the plot and the server log."),
        click.option("--output", type=click.Path(dir_okay=False), default=None,
                     help="JSON file (default <results>/<timestamp>-<workload>.json)."),
        click.option("--no-plot", is_flag=True, help="Write the JSON only."),
        click.option("--quiet", is_flag=True, help="No progress lines."),
        click.option("--text-bytes", default=64, show_default=True, type=click.IntRange(0, 8000),
                     help="Size of each message's text."),
        click.option("--setup-concurrency", default=16, show_default=True, type=click.IntRange(1, 1000),
                     help="Concurrent setup requests (register, login, create room)."),
        click.option("--setup-timeout", default=900.0, show_default=True, type=click.FloatRange(1),
                     help="Seconds the setup may take."),
        click.option("--connect-concurrency", default=200, show_default=True, type=click.IntRange(1, 100_000),
                     help="Concurrent WebSocket connects (all processes together)."),
        click.option("--connect-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1),
                     help="Seconds per connect, from the registry lookup to the welcome frame."),
        click.option("--send-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
                     help="Seconds per send before it counts as failed."),
        click.option("--max-in-flight", default=1000, show_default=True, type=click.IntRange(1, 100_000),
                     help="Open loop: most sends in flight at once (all processes together)."),
        click.option("--user-prefix", default="bench", show_default=True, help="Prefix of the users' names."),
        click.option("--users-file", type=click.Path(dir_okay=False), default=None,
                     help="Keep the run's users (name, password, id, token) here and reuse them in the next runs "
                          "against the same server: skips registering (two bcrypt checks per user)."),
        click.option("--server-data", type=click.Path(file_okay=False), default=None,
                     help="--embedded: keep the server's data folder here instead of a temporary one "
                          "(with --users-file, users survive across runs)."),
        click.option("--no-rawlimit", is_flag=True,
                     help="Do not measure the raw limit (`bench rawlimit`) first; the report then says it was not measured."),
        click.option("--rawlimit-duration", default=3.0, show_default=True, type=click.FloatRange(0.1, 60),
                     help="Seconds of the raw-limit measurement at the start of the run."),
        click.option("--rawlimit-connections", default=1000, show_default=True, type=click.IntRange(1, 20_000),
                     help="Connections of the raw-limit measurement."),
    ]

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _execute(workload: str, params: dict[str, Any], kw: dict[str, Any], via: str = "http") -> None:
    from pystacker_tools.bench import report as results
    from pystacker_tools.bench.rawlimit import RawLimitOptions
    from pystacker_tools.bench.runner import BenchOptions, run_bench
    from pystacker_tools.bench.safety import BenchError
    from pystacker_tools.bench.targets import Targets
    from pystacker_tools.bench.workloads import WORKLOADS

    options = BenchOptions(
        targets=Targets(meta=kw["meta_url"].rstrip("/"), send=kw["send_url"].rstrip("/"),
                        registry=kw["registry_url"].rstrip("/")),
        embedded=kw["embedded"], server_env=_env(kw["server_env"]), allow_remote=kw["allow_remote"],
        server_pids=_pids(kw["server_pid"]), client_procs=kw["client_procs"], duration=kw["duration"],
        max_messages=kw["max_messages"], grace=kw["grace"], results_dir=Path(kw["results_dir"]),
        output=Path(kw["output"]) if kw["output"] else None, plot=not kw["no_plot"], progress=not kw["quiet"],
        via=via, text_bytes=kw["text_bytes"], setup_concurrency=kw["setup_concurrency"],
        setup_timeout=kw["setup_timeout"], connect_concurrency=kw["connect_concurrency"],
        connect_timeout=kw["connect_timeout"], send_timeout=kw["send_timeout"], max_in_flight=kw["max_in_flight"],
        user_prefix=kw["user_prefix"], users_file=Path(kw["users_file"]) if kw["users_file"] else None,
        server_data=Path(kw["server_data"]) if kw["server_data"] else None,
        rawlimit=None if kw["no_rawlimit"] else RawLimitOptions(connections=kw["rawlimit_connections"],
                                                                duration=kw["rawlimit_duration"]))
    if options.server_data is not None and not options.embedded:
        click.echo("pystacker bench: --server-data needs --embedded", err=True)
        sys.exit(2)
    try:
        outcome = run_bench(workload, WORKLOADS[workload], options, params)
    except BenchError as exc:
        click.echo(f"pystacker bench: {exc}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("pystacker bench: interrupted; the processes it started are stopped", err=True)
        sys.exit(130)
    json_path = Path(outcome["json_path"])
    outcome["plot_path"] = results.plot(outcome, json_path.with_suffix(".png")) if options.plot else None
    results.write_json(outcome, json_path)
    click.echo(results.table(outcome))
    click.echo(f"results: {json_path}" + (f", plot: {outcome['plot_path']}" if outcome["plot_path"] else ""))
    sys.exit(0 if outcome["integrity_ok"] and not outcome["problems"] else 1)


@click.group()
def bench() -> None:
    """Load generator and integrity checker (public HTTP/WebSocket API only; loopback targets by default)."""


@bench.command()
@click.option("--users", default=1000, show_default=True, type=click.IntRange(1), help="Users connected.")
@click.option("--groups", default=10, show_default=True, type=click.IntRange(1), help="Group rooms.")
@click.option("--members", default=100, show_default=True, type=click.IntRange(1), help="Members per group.")
@click.option("--senders", default=16, show_default=True, type=click.IntRange(1), help="Concurrent senders.")
@click.option("--rate", default=None, metavar="N[,N...]",
              help="Paced open loop at N sends/s in total (several: one step each); default: closed loop.")
@click.option("--via", type=click.Choice(["http", "ws"]), default="http", show_default=True,
              help="Send with POST /api/chat/send_message or the WebSocket `send` frame.")
@click.option("--typing-share", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of the senders that send a `typing` frame before each message (over their socket).")
@click.option("--watch", default=0, show_default=True, type=click.IntRange(0, 200),
              help="Users whose presence each client watches (presence_subscribe, others of its process).")
@common_options(duration=20.0)
def fanout(users: int, groups: int, members: int, senders: int, rate: str | None, via: str, typing_share: float,
           watch: int, **kw: Any) -> None:
    """Group messages: U users connected, G groups of M members, S senders."""
    _execute("fanout", {"users": users, "groups": groups, "members": members, "senders": senders,
                        "typing_share": typing_share, "watch": watch,
                        "rates": _rates(rate)}, kw, via)


@bench.command()
@click.option("--pairs", "count", default=100, show_default=True, type=click.IntRange(1), help="Private rooms.")
@click.option("--via", type=click.Choice(["http", "ws"]), default="http", show_default=True,
              help="Send with POST /api/chat/send_message or the WebSocket `send` frame.")
@common_options(duration=20.0)
def pairs(count: int, via: str, **kw: Any) -> None:
    """Ping-pong in private rooms: the next message leaves when the previous reached the peer."""
    _execute("pairs", {"pairs": count, "users": 2 * count}, kw, via)


@bench.command()
@click.option("--connections", default=2000, show_default=True, type=click.IntRange(1),
              help="Idle WebSocket connections.")
@click.option("--devices-per-user", "devices", default=1, show_default=True, type=click.IntRange(1, 10),
              help="Sockets per user, each a named device of his (1: one user per connection, the default device).")
@common_options(duration=10.0)
def idle(connections: int, devices: int, **kw: Any) -> None:
    """Idle connections: server memory per connection (needs --server-pid or --embedded)."""
    users = -(-connections // devices)
    _execute("idle", {"connections": connections, "users": users, "devices": devices}, kw)


@bench.command()
@click.option("--users", default=1000, show_default=True, type=click.IntRange(1), help="Users reconnecting.")
@click.option("--groups", default=10, show_default=True, type=click.IntRange(1), help="Group rooms.")
@click.option("--members", default=None, type=click.IntRange(1), help="Members per group (default users/groups).")
@click.option("--messages", default=100, show_default=True, type=click.IntRange(1),
              help="Messages sent into each room while everyone is away.")
@common_options(duration=60.0)
def catchup(users: int, groups: int, members: int | None, messages: int, **kw: Any) -> None:
    """Reconnect storm: everyone away, K messages per room, everyone back at once; time to catch up."""
    _execute("catchup", {"users": users, "groups": groups, "members": members, "messages": messages}, kw)


@bench.command()
@click.option("--connections", default=1000, show_default=True, type=click.IntRange(1, 20_000),
              help="Local WebSocket connections the writer writes to in turn.")
@click.option("--duration", default=5.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds of writing.")
@click.option("--max-frames", default=50_000_000, show_default=True, type=click.IntRange(1),
              help="At most this many frames in all.")
@click.option("--frame-bytes", default=200, show_default=True, type=click.IntRange(130, 16_000),
              help="Size of the prebuilt text frame on the wire, header included.")
@click.option("--receiver-procs", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Receiver processes sharing the connections (the writer is always one process).")
@click.option("--connect-timeout", default=30.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds for every connection to be up.")
@click.option("--grace", default=10.0, show_default=True, type=click.FloatRange(0.1, 600),
              help="Seconds for every receiver to confirm its count after the last write.")
@click.option("--results", "results_dir", default="bench-results", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the JSON.")
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="JSON file (default <results>/<timestamp>-rawlimit.json).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def rawlimit(connections: int, duration: float, max_frames: int, frame_bytes: int, receiver_procs: int,
             connect_timeout: float, grace: float, results_dir: str, output: str | None, quiet: bool) -> None:
    """This box's ceiling: one process writes a prebuilt ~200-byte text frame to local WebSocket
    connections (picows on both ends, 127.0.0.1) as fast as it can; frames/s on one core."""
    from pystacker_tools.bench import report as results
    from pystacker_tools.bench.rawlimit import RawLimitOptions, run_report
    from pystacker_tools.bench.safety import BenchError

    options = RawLimitOptions(connections=connections, duration=duration, max_frames=max_frames,
                              frame_bytes=frame_bytes, receiver_procs=receiver_procs,
                              connect_timeout=connect_timeout, grace=grace)
    try:
        outcome = run_report(options, Path(results_dir), Path(output) if output else None, progress=not quiet)
    except BenchError as exc:
        click.echo(f"pystacker bench: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("pystacker bench: interrupted; the processes it started are stopped", err=True)
        sys.exit(130)
    json_path = Path(outcome["json_path"])
    results.write_json(outcome, json_path)
    click.echo(results.table(outcome))
    click.echo(f"results: {json_path}")
    sys.exit(0 if outcome["integrity_ok"] and not outcome["problems"] else 1)


@bench.command("plot")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--x", "axis", type=click.Choice(scaling.X_AXES), required=True,
              help="What varied between the runs: the plot's x axis.")
@click.option("--output", type=click.Path(dir_okay=False), required=True, help="PNG file to write.")
@click.option("--title", default=None, help="The plot's title (default: the workload and the axis).")
def plot_runs(runs: tuple[str, ...], axis: str, output: str, title: str | None) -> None:
    """How cost grows: one point per run's JSON, against what varied between the runs (PNG and a table)."""
    reports = []
    for run in runs:
        try:
            reports.append((run, json.loads(Path(run).read_text())))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{run}: not a bench result ({exc})", param_hint="RUNS") from None
    try:
        found, metrics = scaling.points(reports, axis)
    except scaling.PlotError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        import matplotlib  # noqa: F401  # the plot needs it; say so before doing anything
    except ImportError:
        from pystacker_tools.bench.report import MATPLOTLIB_MISSING
        click.echo(f"pystacker bench: {MATPLOTLIB_MISSING}", err=True)
        sys.exit(2)
    workload = str(reports[0][1].get("workload", "bench"))
    scaling.plot(found, metrics, axis, Path(output), title or f"pystacker bench {workload}: cost against {axis}")
    click.echo(scaling.table(found, metrics, axis))
    click.echo(f"plot: {output}")
