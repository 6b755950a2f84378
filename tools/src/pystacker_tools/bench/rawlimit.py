"""`pystacker bench rawlimit`: the ceiling of this box, with no server in the way.

One writer process accepts C local WebSocket connections (picows on 127.0.0.1, a free port) and
writes one prebuilt text frame (the bytes the gateway's own `wsframes.text_frame` builds, a chat-shaped
JSON of ~200 bytes) to each of them in turn, one transport write per frame, as fast as it can: the
least Python a gateway can do per delivery. Receiver processes (picows clients, so the frame parsing
is compiled on both ends) check every frame (text, final, the exact payload) and count it.

The writer is the only thing on its core that matters: its CPU seconds come from /proc/<pid>/stat
over the measured window, and the figure is the frames delivered per CPU second of the writer
("frames/s on one core"), next to the plain wall-clock rate and the writer's share of a core (near 1:
the writer was the bottleneck; well below: the receivers or other load were).

A connection whose socket buffer is over its high-water mark is skipped (picows' pause_writing) until
it drains, so memory stays bounded. At the end the writer sends each connection `end:<count>`; the
receiver answers `done:<frames>:<bad>`, and the window ends when every connection has answered, so
the wall time and the CPU include writing out everything that was buffered. Bounded everywhere: the
connections, the frames (--max-frames), the time (--duration), and deadlines for starting, connecting
and the final answers; the processes started here are stopped on the way out.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from pystacker.testing import run_event_loop, text_frame
from pystacker_tools.bench import procfs
from pystacker_tools.bench.safety import BenchError, raise_fd_limit

HOST = "127.0.0.1"  # loopback only: this measures the box, never a network
START_TIMEOUT = 60.0  # a spawned interpreter imports picows, uvloop, ...: seconds on a busy machine
STOP_TIMEOUT = 10.0
CONNECT_CONCURRENCY = 100  # connects in flight per receiver process
MIN_FRAME_BYTES = 130  # from 130 bytes on, the header is 4 bytes (16-bit length)
MAX_FRAME_BYTES = 16_000


@dataclass
class RawLimitOptions:
    connections: int = 1000
    duration: float = 5.0  # seconds of writing
    max_frames: int = 50_000_000  # at most this many frames in all
    frame_bytes: int = 200  # the whole frame on the wire, header included
    receiver_procs: int = 1
    connect_timeout: float = 30.0  # seconds for every connection to be up
    grace: float = 10.0  # seconds for every receiver to confirm after the last write

    def check(self) -> None:
        if not 1 <= self.connections <= 20_000:
            raise BenchError("rawlimit: --connections must be between 1 and 20,000")
        if not MIN_FRAME_BYTES <= self.frame_bytes <= MAX_FRAME_BYTES:
            raise BenchError(f"rawlimit: --frame-bytes must be between {MIN_FRAME_BYTES} and {MAX_FRAME_BYTES}")
        if self.receiver_procs < 1 or self.receiver_procs > self.connections:
            raise BenchError("rawlimit: --receiver-procs must be between 1 and --connections")
        if self.duration <= 0 or self.max_frames < 1:
            raise BenchError("rawlimit: --duration and --max-frames must be positive")


def chat_payload(frame_bytes: int) -> bytes:
    """A chat-shaped JSON text (GoStacker's `chat` frame) padded so the whole frame is `frame_bytes`."""
    size = frame_bytes - 4  # header: FIN+opcode, 126, 16-bit length
    base = {"type": "chat", "id": 7301234567890123, "room_id": 1001, "seq": 123456, "from": 42,
            "payload": {"text": ""}, "time": 1765000000000}
    empty = len(orjson.dumps(base))
    base["payload"] = {"text": "r" * max(0, size - empty)}
    payload = orjson.dumps(base)
    if len(payload) != size:
        raise BenchError(f"rawlimit: --frame-bytes {frame_bytes} is too small for the chat frame")
    return payload


def measure(options: RawLimitOptions, progress: bool = False) -> dict[str, Any]:
    """Run the writer and the receivers; return the measurement (raises BenchError if it could not run)."""
    options.check()
    payload = chat_payload(options.frame_bytes)
    frame = text_frame(payload)
    assert len(frame) == options.frame_bytes
    raise_fd_limit(options.connections + 1024)  # the processes inherit it: one descriptor per connection
    context = multiprocessing.get_context("spawn")  # no fork of a parent's event loop
    processes: list[Any] = []
    pipes: list[Connection] = []

    def start(target: Any, *args: Any) -> Connection:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=target, args=(child_end, *args), daemon=True,
                                  name=f"pystacker-bench-rawlimit-{len(processes)}")
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)
        return parent_end

    def say(text: str) -> None:
        if progress:
            print(f"bench: rawlimit: {text}", file=sys.stderr, flush=True)

    started = time.monotonic()
    try:
        writer = start(_writer_main, asdict(options), frame)
        hello = _answer(writer, START_TIMEOUT, "the writer")
        shares = [options.connections // options.receiver_procs + (1 if i < options.connections % options.receiver_procs else 0)
                  for i in range(options.receiver_procs)]
        say(f"writer pid {hello['pid']} on {HOST}:{hello['port']}; {options.connections:,} connections "
            f"from {options.receiver_procs} receiver process(es)")
        receivers = [start(_receiver_main, hello["port"], share, payload, asdict(options)) for share in shares]
        last = START_TIMEOUT + options.connect_timeout + options.duration + options.grace + 30
        written = _answer(writer, last, "the writer")
        say(f"{written['sent']:,} frames written in {written['wall_s']:.2f} s")
        checked = [_answer(pipe, last, f"receiver {i}") for i, pipe in enumerate(receivers)]
    finally:
        for pipe in pipes:
            try:
                pipe.send("quit")
            except (OSError, ValueError):
                pass
        for process in processes:
            process.join(STOP_TIMEOUT)
            if process.is_alive():  # one of ours that did not stop by itself
                process.kill()
                process.join(STOP_TIMEOUT)
        for pipe in pipes:
            pipe.close()
    return _result(options, frame, hello, written, checked, time.monotonic() - started)


def _result(options: RawLimitOptions, frame: bytes, hello: dict[str, Any], written: dict[str, Any],
            checked: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    delivered = sum(r["frames"] for r in checked)
    bad = sum(r["bad"] for r in checked)
    mismatched = sum(r["mismatched"] for r in checked)
    ended = sum(r["ended"] for r in checked)
    cpu, wall = written["cpu_s"], written["wall_s"]
    problems = []
    if delivered != written["sent"]:
        problems.append(f"rawlimit: {written['sent']:,} frames written, {delivered:,} delivered")
    if bad:
        problems.append(f"rawlimit: {bad:,} frames not the one written (wrong type, fragment or payload)")
    if ended != options.connections or written["answered"] != options.connections:
        problems.append(f"rawlimit: {ended:,} of {options.connections:,} connections got their end frame, "
                        f"{written['answered']:,} answered, {written['gone']:,} closed early")
    if mismatched:
        problems.append(f"rawlimit: {mismatched} connections received another count than written")
    return {
        "measured": True,
        "connections": options.connections,
        "frame_bytes": len(frame),
        "frames_sent": written["sent"],
        "frames_delivered": delivered,
        "bad_frames": bad,
        "wall_s": round(wall, 4),
        "writer_cpu_s": round(cpu, 3),
        "writer_cpu_share": round(cpu / wall, 3) if wall > 0 else None,
        # the figure: frames per second of one core's CPU time (the writer's, from /proc)
        "frames_per_s_one_core": round(delivered / cpu, 1) if cpu > 0 else None,
        "frames_per_s_wall": round(delivered / wall, 1) if wall > 0 else None,
        "us_per_frame": round(cpu * 1e6 / delivered, 3) if delivered else None,
        "mbytes_per_s_wall": round(delivered * len(frame) / wall / 1e6, 1) if wall > 0 else None,
        "rounds": written["rounds"],
        "rounds_with_paused_connections": written["slow_rounds"],
        "writer_pid": hello["pid"],
        "receiver_pids": [r["pid"] for r in checked],
        "receiver_cpu_s": [round(r["cpu_s"], 3) for r in checked],
        "transport": written["transport"],
        "picows": written["picows"],
        "options": asdict(options),
        "elapsed_s": round(elapsed, 2),
        "problems": problems,
    }


def _answer(pipe: Connection, timeout: float, what: str) -> dict[str, Any]:
    if not pipe.poll(timeout):
        raise BenchError(f"rawlimit: {what} did not answer within {timeout:.0f} s")
    try:
        status, value = pipe.recv()
    except EOFError:
        raise BenchError(f"rawlimit: {what} exited without an answer") from None
    if status != "ok":
        raise BenchError(f"rawlimit: {what} failed: {value}")
    answer: dict[str, Any] = value
    return answer


# -- the processes -------------------------------------------------------------------------------


def _child(conn: Connection, coro: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        run_event_loop(coro)
    except BaseException as exc:  # the parent ends the run with this line
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


def _writer_main(conn: Connection, options: dict[str, Any], frame: bytes) -> None:
    _child(conn, _writer(conn, RawLimitOptions(**options), frame))


def _receiver_main(conn: Connection, port: int, count: int, payload: bytes, options: dict[str, Any]) -> None:
    _child(conn, _receiver(conn, port, count, payload, RawLimitOptions(**options)))


async def _until_quit(conn: Connection, timeout: float) -> None:
    from pystacker_tools.bench.worker import recv_message

    try:
        await recv_message(conn, timeout)
    except (TimeoutError, EOFError, OSError):
        pass


async def _writer(conn: Connection, options: RawLimitOptions, frame: bytes) -> None:
    from importlib.metadata import version

    from picows import WSListener, WSMsgType, WSTransport, ws_create_server

    loop = asyncio.get_running_loop()
    n = options.connections
    everyone = loop.create_future()  # all connected
    answered = loop.create_future()  # every connection answered `done` or closed
    resumed = asyncio.Event()
    peers: list[Any] = []
    counts = {"paused": 0, "answered": 0, "gone": 0, "acked_frames": 0}

    def settle() -> None:
        if counts["answered"] + counts["gone"] >= n and not answered.done():
            answered.set_result(None)

    class Peer(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport
            self.paused = False
            self.gone = False
            self.answered = False
            peers.append(self)
            if len(peers) == n and not everyone.done():
                everyone.set_result(None)

        def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
            if frame.msg_type == WSMsgType.TEXT and not self.answered:
                text = frame.get_payload_as_bytes()
                if text.startswith(b"done:"):
                    self.answered = True
                    counts["answered"] += 1
                    counts["acked_frames"] += int(text.split(b":")[1])
                    settle()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not getattr(self, "gone", True):
                self.gone = True
                if not self.paused:
                    self.paused = True
                    counts["paused"] += 1
                if not self.answered:
                    counts["gone"] += 1
                    settle()

        def pause_writing(self) -> None:
            if not self.paused:
                self.paused = True
                counts["paused"] += 1

        def resume_writing(self) -> None:
            if self.paused and not self.gone:
                self.paused = False
                counts["paused"] -= 1
                resumed.set()

    server = await ws_create_server(lambda request: Peer(), HOST, 0, backlog=min(n, 4096),
                                    websocket_handshake_timeout=options.connect_timeout)
    try:
        port = server.sockets[0].getsockname()[1]
        conn.send(("ok", {"pid": os.getpid(), "port": port}))
        try:
            await asyncio.wait_for(everyone, options.connect_timeout + START_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"only {len(peers)} of {n} connections came up") from None
        writes = [p.transport.underlying_transport.write for p in peers]
        transport_kind = type(peers[0].transport.underlying_transport).__module__ + "." + \
            type(peers[0].transport.underlying_transport).__qualname__
        skipped = [0] * n
        max_rounds = max(1, options.max_frames // n)
        rounds = slow_rounds = 0
        sleep = asyncio.sleep
        clock = time.monotonic_ns
        before = procfs.sample(os.getpid())
        start = clock()
        deadline = start + int(options.duration * 1e9)
        while rounds < max_rounds and clock() < deadline:
            if counts["paused"]:
                if counts["paused"] == n:  # every socket is full: wait for one to drain
                    if all(p.gone for p in peers):
                        break
                    resumed.clear()
                    try:
                        await asyncio.wait_for(resumed.wait(), max(0.0, (deadline - clock()) / 1e9))
                    except TimeoutError:
                        break
                slow_rounds += 1
                for i, peer in enumerate(peers):
                    if peer.paused:
                        skipped[i] += 1
                    else:
                        writes[i](frame)
            else:
                for write in writes:
                    write(frame)
            rounds += 1
            await sleep(0)  # let the loop flush buffered writes and deliver pause/resume
        sent = 0
        for i, peer in enumerate(peers):
            count = rounds - skipped[i]
            sent += count
            if not peer.gone:
                writes[i](text_frame(b"end:%d" % count))
        try:
            await asyncio.wait_for(answered, options.grace)
        except TimeoutError:
            pass
        end = clock()
        after = procfs.sample(os.getpid())
        conn.send(("ok", {"sent": sent, "rounds": rounds, "slow_rounds": slow_rounds,
                          "wall_s": (end - start) / 1e9, "cpu_s": after.cpu_s - before.cpu_s,
                          "start_ns": start, "end_ns": end, "answered": counts["answered"], "gone": counts["gone"],
                          "acked_frames": counts["acked_frames"], "transport": transport_kind,
                          "picows": version("picows")}))
        await _until_quit(conn, options.grace + 30)
    finally:
        for peer in peers:
            if not peer.gone:
                peer.transport.disconnect(graceful=False)
        server.close()


async def _receiver(conn: Connection, port: int, count: int, payload: bytes, options: RawLimitOptions) -> None:
    from picows import WSListener, WSMsgType, WSTransport, ws_connect

    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    state = {"finished": 0}
    text_type = WSMsgType.TEXT
    listeners: list[Any] = []

    def one_more() -> None:
        state["finished"] += 1
        if state["finished"] >= count and not finished.done():
            finished.set_result(None)

    class Receiver(WSListener):
        def __init__(self) -> None:
            self.frames = 0
            self.bad = 0
            self.announced = -1
            self.done = False

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
            data = frame.get_payload_as_bytes()
            if data == payload and frame.msg_type is text_type and frame.fin:
                self.frames += 1
            elif data.startswith(b"end:") and frame.msg_type is text_type and not self.done:
                self.announced = int(data[4:])
                self.done = True
                transport.send(text_type, b"done:%d:%d" % (self.frames, self.bad))
                one_more()
            else:
                self.bad += 1

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not self.done:
                self.done = True
                one_more()

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    url = f"ws://{HOST}:{port}/"

    async def connect() -> None:
        async with gate:
            _, listener = await ws_connect(Receiver, url, websocket_handshake_timeout=options.connect_timeout,
                                           max_frame_size=MAX_FRAME_BYTES)
            listeners.append(listener)

    before = procfs.sample(os.getpid())
    try:
        await asyncio.wait_for(asyncio.gather(*(connect() for _ in range(count))), options.connect_timeout)
        await asyncio.wait_for(finished, START_TIMEOUT + options.connect_timeout + options.duration + options.grace)
        after = procfs.sample(os.getpid())
        ended = [r for r in listeners if r.announced >= 0]
        conn.send(("ok", {"pid": os.getpid(), "connected": len(listeners), "frames": sum(r.frames for r in listeners),
                          "bad": sum(r.bad for r in listeners), "ended": len(ended),
                          "mismatched": sum(1 for r in ended if r.frames != r.announced),
                          "cpu_s": after.cpu_s - before.cpu_s}))
        await _until_quit(conn, options.grace + 30)
    finally:
        for listener in listeners:
            listener.transport.disconnect(graceful=False)


# -- in the other workloads' reports ----------------------------------------------------------------


def not_measured(reason: str) -> dict[str, Any]:
    return {"measured": False, "reason": reason}


def _significant(value: float) -> float:
    return float(f"{value:.4g}")


def add_ratios(raw: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """Each step's deliveries/s over the raw limit (frames/s on one core), and its server CPU per
    delivery over the raw CPU per frame (both None when either side is missing)."""
    limit = raw.get("frames_per_s_one_core") if raw.get("measured") else None
    raw_us = raw.get("us_per_frame") if raw.get("measured") else None
    for step in steps:
        rate = step.get("deliveries_per_s")
        step["ratio_to_rawlimit"] = _significant(rate / limit) if rate and limit else None
        cpu = sum((step.get("server_cpu_s") or {}).values())
        deliveries = step.get("deliveries") or 0
        step["server_us_per_delivery"] = round(cpu * 1e6 / deliveries, 2) if cpu and deliveries else None
        step["server_cpu_to_rawlimit"] = (_significant(step["server_us_per_delivery"] / raw_us)
                                          if step["server_us_per_delivery"] and raw_us else None)


def run_report(options: RawLimitOptions, results_dir: Path, output: Path | None, progress: bool) -> dict[str, Any]:
    """`pystacker bench rawlimit`: the measurement as a report of its own (same envelope as the others)."""
    started = datetime.now(UTC)
    json_path = output or results_dir / f"{started.strftime('%Y%m%d-%H%M%S')}-rawlimit.json"
    machine_before = procfs.machine()
    begun = time.monotonic()
    raw = measure(options, progress)
    return {
        "schema": 1,
        "workload": "rawlimit",
        "run_id": secrets.token_hex(3),
        "started_at": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - begun, 1),
        "parameters": asdict(options),
        "machine": {**machine_before, "load_average_end": procfs.machine()["load_average"]},
        "git": procfs.git_commit(),
        "rawlimit": raw,
        "steps": [],
        "problems": list(raw["problems"]),
        "integrity_ok": raw["frames_delivered"] == raw["frames_sent"] and raw["bad_frames"] == 0,
        "json_path": str(json_path),
    }
