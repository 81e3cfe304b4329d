"""Support code of the tests (no tests, no fixtures: fixtures live in the ``conftest.py`` files).

``pythonpath = ["tests"]`` in pyproject.toml makes this package importable from every test, e.g.
``from support.waiting import scaled, wait_until``. One module per idea:

- :mod:`support.waiting`: ``wait_until`` / ``wait_until_sync`` (poll a condition until a deadline, never sleep
  blindly), ``time_scale`` and ``scaled`` (every time window scaled by ``LETSFRAG_TEST_TIME_SCALE``).
- :mod:`support.seed`: a realistic deployment written into Redis in the formats of docs/redis.md, relative
  to one ``now`` (the status and dashboard tests, ``benchmarks/tui.py``).
- :mod:`support.fake_hosts`: ``FakeHost``, a protocol-level host (no processes) for the broker tests, and the
  ``Ledger`` that catches two live hosts running one cluster.
- :mod:`support.broker`: a broker config with test-speed timers and a ``Deployment`` of fake hosts and brokers.
- :mod:`support.supervisor`: a host config around the stub cluster program (``tests/supervisor/programs/``)
  and broker stand-ins (grant, revoke, layout, doorbell) for the supervisor tests.
- :mod:`support.cluster`: play broker and supervisor in Redis and run shard clients against a simulator
  (the cluster and RPC tests; ``discord_settings_restored`` undoes what a client sets in discord.py).
- :mod:`support.sim`: real discord.py clients pointed at a simulator and a raw gateway client (the simulator
  tests).
- :mod:`support.tui`: seeding, an app factory and a fake host inbox for the dashboard tests.
- :mod:`support.chaos`: the checks every chaos test ends with (all shards READY once, a clean referee, the
  story in the events) and the faulty bot (``tests/chaos/programs/``).
- :mod:`support.exactly_once`: the simulator referee's handling counters, cluster states and a deployment with
  Redis ACL, for the exactly-once chaos tests.
- :mod:`support.cli`: ``main_in_process``, the ``letsfrag`` command run in the test process through
  ``letsfrag.cli.main.main`` (for tests that check many command lines; a few stay real subprocesses).
- :mod:`support.sentinel`: a Redis master, a replica and three sentinels on loopback, for the Sentinel failover
  test.

The programs that tests run as subprocesses stay beside their tests (``tests/supervisor/programs/``,
``tests/chaos/programs/``).
"""
