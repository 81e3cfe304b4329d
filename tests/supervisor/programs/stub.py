"""A stand-in cluster process that speaks the supervisor IPC protocol (letsfrag/ipc.py).

Its behaviour is chosen per cluster: ``STUB_MODE_FILE`` (JSON ``{"default": mode, "<cluster id>": mode}``, read
at start so a test can change it between runs), else ``STUB_MODE``. Modes:

well          hello, heartbeats, ready; exits 0 on IPC ``stop``, SIGTERM or EOF
crash         writes a traceback to stderr and exits 1 at once
crash_after   ready, then raises after ``STUB_CRASH_AFTER`` seconds (exit 1)
config        exits 78 (EX_CONFIG) with a message
leak          prints ``LETSFRAG_REDIS_URL``, then raises an exception quoting the token, the Redis password, the
              signing secret and ``STUB_API_KEY`` (exit 1): what a careless bot does
fatal         reports fatal close 4004 over IPC, exits 77
fenced        reports it is fenced over IPC, exits 75
ignore_term   ready; ignores SIGTERM and IPC ``stop``
fork          ready; forks a grandchild that leaves the group (setsid) and ignores SIGTERM
hang          ready; then blocks its event loop (no more heartbeats)
memory        ready; then grows RSS by ``STUB_GROW_MB`` MiB
flood         ready; writes ``STUB_FLOOD_MB`` MiB to stdout as fast as it can, then idles
huge_line     ready; sends one IPC ``error`` line of ``STUB_LINE_MB`` MiB (default 2), then heartbeats on

Every start appends ``{"pid", "epoch", "incarnation", "mode", "argv", "handover"}`` to ``$STUB_DIR/starts-<cid>.jsonl``
(``handover``: ``LETSFRAG_HANDOVER``; a successor reports ready like any cluster); an IPC ``promote`` appends
``{"pid", "epoch"}`` to ``$STUB_DIR/promoted-<cid>.jsonl``;
the ``fork`` grandchild writes its pid to ``$STUB_DIR/grandchild-<cid>-<pid>.pid``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from letsfrag.ipc import IpcChannel

CLUSTER = os.environ.get("LETSFRAG_CLUSTER_ID", "0")
STUB_DIR = Path(os.environ.get("STUB_DIR", "."))
HEARTBEAT = float(os.environ.get("STUB_HB", "0.1"))


def mode() -> str:
    path = os.environ.get("STUB_MODE_FILE")
    if path and os.path.exists(path):
        table = json.loads(Path(path).read_text())
        return str(table.get(CLUSTER, table.get("default", "well")))
    return os.environ.get("STUB_MODE", "well")


def record_start(current: str) -> None:
    entry = {"pid": os.getpid(), "epoch": os.environ.get("LETSFRAG_EPOCH"), "mode": current,
             "incarnation": os.environ.get("LETSFRAG_HOST_INCARNATION"), "argv": sys.argv,
             "token_in_env": bool(os.environ.get("LETSFRAG_TOKEN")), "ts": time.time(),
             "handover": os.environ.get("LETSFRAG_HANDOVER", "")}
    with open(STUB_DIR / f"starts-{CLUSTER}.jsonl", "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def record_promote(epoch: object) -> None:
    with open(STUB_DIR / f"promoted-{CLUSTER}.jsonl", "a") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "epoch": epoch}) + "\n")


def fork_grandchild() -> None:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (STUB_DIR / f"grandchild-{CLUSTER}-{os.getpid()}.pid").write_text(str(os.getpid()))
        while True:
            time.sleep(1)


async def heartbeats(channel: IpcChannel, state: dict[str, bool]) -> None:
    while True:
        await channel.send("heartbeat", ts=time.time(), ready=state["ready"], shards={}, guilds=3, latency=0.01,
                           rss=0, loop_lag=0.0)
        await asyncio.sleep(HEARTBEAT)


async def main() -> int:
    current = mode()
    record_start(current)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    if current == "crash":
        print('Traceback (most recent call last):\n  File "stub.py", line 1, in <module>', file=sys.stderr)
        print("RuntimeError: boom at start", file=sys.stderr, flush=True)
        return 1
    if current == "leak":
        url = os.environ["LETSFRAG_REDIS_URL"]
        print(f"connecting to {url} with password {urlsplit(url).password}", flush=True)
        raise RuntimeError(f"leak: token={os.environ['LETSFRAG_TOKEN']} password={urlsplit(url).password} "
                           f"secret={os.environ.get('LETSFRAG_SECRET')} key={os.environ.get('STUB_API_KEY')}")
    if current == "config":
        print("config problem: the bot's settings are wrong", file=sys.stderr, flush=True)
        return 78
    channel = await IpcChannel.from_env()
    assert channel is not None, "started without LETSFRAG_IPC_FD"
    await channel.send("hello", pid=os.getpid(), epoch=int(os.environ["LETSFRAG_EPOCH"]))
    if current == "fenced":
        await channel.send("fenced", reason="epoch 1 no longer owns cluster")
        return 75
    if current == "fatal":
        await channel.send("fatal", code=4004, reason="Authentication failed")
        await asyncio.sleep(0.05)
        return 77
    state = {"ready": False}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if current == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    beat = asyncio.create_task(heartbeats(channel, state))

    async def read_ipc() -> None:
        while True:
            message = await channel.receive()
            if message is None:  # the supervisor is gone: exit at once
                os._exit(0)
            if message.get("op") == "stop" and current != "ignore_term":
                stop.set()
            elif message.get("op") == "promote":
                record_promote(message.get("epoch"))

    reader = asyncio.create_task(read_ipc())
    await asyncio.sleep(float(os.environ.get("STUB_READY_DELAY", "0.05")))
    state["ready"] = True
    await channel.send("ready")
    if current == "fork":
        fork_grandchild()
    elif current == "crash_after":
        await asyncio.sleep(float(os.environ.get("STUB_CRASH_AFTER", "0.5")))
        raise RuntimeError("boom after running a while")
    elif current == "hang":
        await asyncio.sleep(float(os.environ.get("STUB_HANG_AFTER", "0.2")))
        while True:
            time.sleep(0.05)  # noqa: ASYNC251 - on purpose: the event loop is blocked, no heartbeats
    elif current == "memory":
        hoard = []
        for _ in range(int(os.environ.get("STUB_GROW_MB", "80"))):
            hoard.append(bytearray(os.urandom(1024 * 1024)))
            await asyncio.sleep(0.005)
        state["hoard"] = bool(hoard)
    elif current == "huge_line":
        text = "x" * int(float(os.environ.get("STUB_LINE_MB", "2")) * 1024 * 1024)
        await channel.send("error", text=f"Traceback (most recent call last):\nValueError: {text}")
    elif current == "flood":
        line = b"x" * 1023 + b"\n"
        block = line * 64
        total = int(float(os.environ.get("STUB_FLOOD_MB", "8")) * 1024 * 1024)
        written = 0
        while written < total:
            sys.stdout.buffer.write(block)
            written += len(block)
            if written % (1024 * 1024) == 0:
                await asyncio.sleep(0)
        sys.stdout.buffer.flush()
    await stop.wait()
    beat.cancel()
    reader.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
