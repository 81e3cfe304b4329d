"""``letsfrag reshard`` as a user runs it: the real CLI (a subprocess, signed with ``$LETSFRAG_SECRET``) against a
real broker and redis-server; the test plays the supervisors (FakeHost). Exit codes, stdout/stderr, no traceback."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from support.broker import TOKEN, Deployment, Stub, make_config
from support.waiting import scaled, wait_until

SECRET = "s3cret-for-reshard-tests"


async def _letsfrag(dep: Deployment, *args: str, secret: str | None = SECRET) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LETSFRAG_SECRET"}
    if secret is not None:
        env["LETSFRAG_SECRET"] = secret
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "letsfrag", "reshard", *args, "--redis", dep.url, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=scaled(60))
    assert process.returncode is not None
    text_out, text_err = out.decode(), err.decode()
    assert "Traceback" not in text_out + text_err, text_err
    return process.returncode, text_out, text_err


async def _two_hosts(dep: Deployment, *, capacity: int = 4, **config: object) -> None:
    """8 shards in 2 clusters of 4, max_concurrency 4, one cluster on each host; budget 990 of 1000. The hosts take
    part in handovers, but the processes they "start" never become ready."""
    await dep.broker(make_config(dep.url, secret=SECRET, shards=8, shards_per_cluster=4, max_concurrency=4,
                                 **config))
    await dep.host("h1", capacity=capacity, secret=SECRET, handovers=True, successor="never")
    await dep.host("h2", capacity=capacity, secret=SECRET, handovers=True, successor="never")
    await wait_until(lambda: dep.settled({"h1": 1, "h2": 1}), message="one cluster on each host")
    await dep.redis.hset(dep.keys.identify("budget"), mapping={"total": 1000, "remaining": 990})
    await _ticks_after_write(dep)


PLAN_13 = """\
reshard plan: generation 1 -> 2 (--shards 13)
  shards: 8 -> 16
  note: 13 shards rounded up to 16, a multiple of max_concurrency 4 (Discord requires it)
  clusters of generation 2: 4 (4 shards per cluster)
  capacity during the overlap: generation 2's processes run beside generation 1's until the switch; each counts \
against its host's capacity
    h1: 2 new cluster(s) in 3 free slot(s)
    h2: 2 new cluster(s) in 3 free slot(s)
  identifies: 16 needed of 990 remaining (100 reserve, 874 left after)
  estimated time: 20s (ceil(16 / 4) = 4 x identify_window 5s)
"""


def test_the_readme_shows_this_output() -> None:
    assert PLAN_13 in (Path(__file__).resolve().parents[2] / "README.md").read_text()


async def test_dry_run_prints_the_plan_from_the_live_state_and_exits_0(deployment: Deployment) -> None:
    dep = deployment
    await _two_hosts(dep)
    before = await dep.assignment()
    await _ticks_after_write(dep)
    code, out, err = await _letsfrag(dep, "--shards", "13", "--dry-run")
    assert (code, out) == (0, PLAN_13), err
    assert "planning a reshard to 13 shards" in err
    # nothing changed: a plan only
    assert await dep.assignment() == before
    assert await dep.redis.hlen(dep.keys.handover) == 0


async def _ticks_after_write(dep: Deployment) -> None:
    """Two whole broker ticks: the second one started after the test's last write, so it read it."""
    for _ in range(2):
        await dep.brokers[0].wait_tick(scaled(5.0))


async def test_without_dry_run_it_runs_and_rolls_back_when_the_new_clusters_are_not_ready(
        deployment: Deployment) -> None:
    """The test's hosts start no process: the new generation is never ready, so the reshard rolls back at its
    deadline, naming the cluster; generation 1 keeps its layout and grants, and no reshard key is left."""
    dep = deployment
    await _two_hosts(dep)
    await _ticks_after_write(dep)
    before = await dep.assignment()
    layout = await dep.redis.hgetall(dep.keys.layout)
    code, out, err = await _letsfrag(dep, "--shards", "13", "--timeout", "1s")
    assert code == 1, err
    assert out == PLAN_13
    assert "generation 2: starting 4 cluster(s) (16 shards) beside generation 1 (h1: [2, 4], h2: [3, 5])" in err
    assert ("failed: rolled back: cluster 2 of generation 2 was not ready within 1s (nor [3, 4, 5]); generation 2's "
            "clusters stopped, generation 1 keeps serving") in err
    assert await dep.assignment() == before
    assert {k: v for k, v in (await dep.redis.hgetall(dep.keys.layout)).items() if k != "updated_at"} == \
        {k: v for k, v in layout.items() if k != "updated_at"}
    assert await dep.redis.exists(dep.keys.reshard, dep.keys.handover) == 0


async def test_recommended_takes_the_count_of_gateway_bot(deployment: Deployment, stub: Stub) -> None:
    dep = deployment
    await _two_hosts(dep, token=TOKEN, discord={"api_url": stub.url})
    await wait_until(lambda: stub.calls == [f"Bot {TOKEN}"], message="the broker fetched /gateway/bot")
    code, out, err = await _letsfrag(dep, "--recommended", "--dry-run")
    assert code == 0, err
    first, _, rest = PLAN_13.partition("\n")
    assert out == first.replace("(--shards 13)", "(--recommended: 13 from /gateway/bot)") + "\n" + rest
    assert "planning a reshard to the recommended shard count" in err


async def test_a_low_budget_is_refused_with_the_numbers(deployment: Deployment) -> None:
    dep = deployment
    await _two_hosts(dep)
    await dep.redis.hset(dep.keys.identify("budget"), mapping={"total": 1000, "remaining": 110})
    await _ticks_after_write(dep)
    code, out, err = await _letsfrag(dep, "--shards", "16", "--dry-run")
    assert (code, out) == (1, "")
    assert ("refused: the identify budget cannot pay a reshard to 16 shards: 110 session starts remain, 100 are "
            "the reserve, and the 16 new sessions need 16") in err


async def test_no_room_and_the_same_count_are_refused(deployment: Deployment) -> None:
    dep = deployment
    await _two_hosts(dep, capacity=2)
    code, _, err = await _letsfrag(dep, "--shards", "16", "--dry-run")
    assert code == 1
    assert ("refused: no room for generation 2: its 4 cluster(s) run beside generation 1's during the overlap and "
            "need 4 free slot(s), the live hosts have 2 (h1: 1 of capacity 2 free, h2: 1 of capacity 2 free)") in err
    code, out, err = await _letsfrag(dep, "--shards", "16")  # not a dry run: refused the same way, nothing runs
    assert (code, out) == (1, "") and "refused: no room for generation 2" in err
    assert not await dep.redis.exists(dep.keys.reshard)
    code, _, err = await _letsfrag(dep, "--shards", "7", "--dry-run")
    assert code == 1
    assert ("refused: generation 1 already has 8 shards (7 rounded up to a multiple of 4): nothing to reshard"
            in err)
    code, _, err = await _letsfrag(dep, "--recommended", "--dry-run")
    assert code == 1 and "refused: the recommended shard count is unknown" in err


async def test_bad_arguments_exit_2_naming_the_argument(deployment: Deployment) -> None:
    dep = deployment
    for args, named in [
        (["--shards", "0"], "argument --shards: expected a whole number of shards >= 1, found '0'"),
        (["--shards", "many"], "argument --shards: expected a whole number of shards >= 1, found 'many'"),
        (["--shards", "16", "--recommended"], "argument --recommended: not allowed with argument --shards"),
        ([], "one of the arguments --shards --recommended is required"),
        (["--shards", "16", "--timeout", "soon"], "error: --timeout:"),
    ]:
        code, out, err = await _letsfrag(dep, *args)
        assert code == 2, (args, out, err)
        assert named in err, (args, err)


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
async def test_an_unsigned_or_forged_reshard_gets_no_plan(deployment: Deployment, secret: str | None) -> None:
    dep = deployment
    await _two_hosts(dep)
    code, out, err = await _letsfrag(dep, "--shards", "16", "--dry-run", "--timeout", "2s", secret=secret)
    assert (code, out) == (1, "")
    assert "failed: reshard:" in err
