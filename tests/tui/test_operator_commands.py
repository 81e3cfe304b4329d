"""``letsfrag restart / drain / rebalance`` against a test bus that answers like a host or the broker."""

from __future__ import annotations

import pytest
from support.tui import FakeInbox, seed_url

from letsfrag.cli.main import build_parser
from letsfrag.cli.operator import run_drain, run_rebalance, run_restart
from letsfrag.redis_server import free_port


def _args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


async def test_restart_cluster_goes_to_the_broker(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    reply = {"ok": True, "state": "switched", "message": "cluster 7: switched to h0 (epoch 12) in 2.1 s"}
    async with FakeInbox(redis_url, lambda k: k.broker_inbox, "broker:a", reply) as inbox:
        code = await run_restart(_args("restart", "--cluster", "7", "--redis", redis_url, "--timeout", "5s"))
    assert code == 0 and len(inbox.received) == 1
    sent = inbox.received[0]
    assert sent["action"] == "restart" and sent["cluster"] == 7 and 0 < sent["wait"] < 5
    assert "switched to h0 (epoch 12) in 2.1 s" in capsys.readouterr().out
    rolled = {"ok": False, "state": "rolled_back", "message": "cluster 7: rolled back (the successor failed)"}
    async with FakeInbox(redis_url, lambda k: k.broker_inbox, "broker:a", rolled):
        code = await run_restart(_args("restart", "--cluster", "7", "--redis", redis_url, "--timeout", "5s"))
    assert code == 1 and "cluster 7: rolled back (the successor failed)" in capsys.readouterr().err


async def test_restart_falls_back_to_the_host_when_the_broker_says_so(redis_url: str) -> None:
    await seed_url(redis_url)
    fallback = {"ok": False, "fallback": "host", "host": "host-02", "message": "its host does not hand over"}
    ok = {"ok": True, "message": "cluster 7 restarted"}
    async with FakeInbox(redis_url, lambda k: k.broker_inbox, "broker:a", fallback) as broker, \
            FakeInbox(redis_url, lambda k: k.host_inbox("host-02"), "host:host-02", ok) as host:
        code = await run_restart(_args("restart", "--cluster", "7", "--redis", redis_url, "--timeout", "5s"))
    assert code == 0 and len(broker.received) == 1 and host.received == [{"action": "restart", "cluster": 7}]


async def test_restart_cluster_goes_to_its_host_without_a_broker(redis_url: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    await seed_url(redis_url)
    reply = {"ok": True, "message": "cluster 7 restarted"}
    async with FakeInbox(redis_url, lambda k: k.host_inbox("host-02"), "host:host-02", reply) as inbox:
        code = await run_restart(_args("restart", "--cluster", "7", "--redis", redis_url, "--timeout", "5s"))
    assert code == 0 and inbox.received == [{"action": "restart", "cluster": 7}]
    assert "cluster 7 restarted" in capsys.readouterr().out


async def test_rolling_restart_failure_exits_1(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    reply = {"ok": False, "message": "cluster 3 did not become READY"}
    async with FakeInbox(redis_url, lambda k: k.host_inbox("h1"), "host:h1", reply) as inbox:
        code = await run_restart(_args("restart", "--host", "h1", "--rolling", "--redis", redis_url))
    assert code == 1 and inbox.received == [{"action": "rolling_restart"}]
    assert "did not become READY" in capsys.readouterr().err


async def test_drain_and_rebalance_go_to_the_broker(redis_url: str) -> None:
    reply = {"ok": True, "message": "done"}
    async with FakeInbox(redis_url, lambda k: k.broker_inbox, "broker:a", reply) as inbox:
        assert await run_drain(_args("drain", "h2", "--redis", redis_url)) == 0
        assert await run_rebalance(_args("rebalance", "--redis", redis_url, "--namespace", "letsfrag")) == 0
    assert inbox.received == [{"action": "drain", "host": "h2"}, {"action": "rebalance"}]


async def test_unassigned_cluster_and_nobody_listening_exit_1(redis_url: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    await seed_url(redis_url)
    assert await run_restart(_args("restart", "--cluster", "11", "--redis", redis_url)) == 1
    assert "not assigned" in capsys.readouterr().err
    assert await run_rebalance(_args("rebalance", "--redis", redis_url)) == 1
    assert "no broker is running" in capsys.readouterr().err


async def test_bad_arguments_and_unreachable_redis_exit_2(redis_url: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_drain(_args("drain", "h", "--redis", redis_url, "--timeout", "soon")) == 2
    assert "--timeout" in capsys.readouterr().err
    dead = f"redis://127.0.0.1:{free_port()}/0"
    assert await run_rebalance(_args("rebalance", "--redis", dead)) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
