"""The declared public API of ``letsfrag`` is exactly what we mean, and ``import letsfrag`` stays light."""

from __future__ import annotations

import subprocess
import sys

import discord
import pytest
from discord.ext import commands

import letsfrag


def test_all_is_the_public_api() -> None:
    assert sorted(letsfrag.__all__) == [
        "ClusterBroker", "ClusterManager", "ClusterShardBot", "ClusterShardClient", "LetsfragError", "RpcClient",
        "__version__",
    ]
    for name in letsfrag.__all__:
        assert getattr(letsfrag, name) is not None
    assert isinstance(letsfrag.__version__, str) and letsfrag.__version__.count(".") == 2


def test_exports_are_the_discord_subclasses_and_the_rpc_client() -> None:
    from letsfrag.rpc.caller import RpcClient

    assert issubclass(letsfrag.ClusterShardClient, discord.AutoShardedClient)
    assert issubclass(letsfrag.ClusterShardBot, commands.AutoShardedBot)
    assert letsfrag.RpcClient is RpcClient


def test_seed_names_for_the_broker_and_the_manager() -> None:
    from letsfrag.broker.broker import ClusterBroker
    from letsfrag.supervisor.manager import ClusterManager

    assert letsfrag.ClusterBroker is ClusterBroker
    assert letsfrag.ClusterManager is ClusterManager
    assert issubclass(letsfrag.LetsfragError, Exception)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        letsfrag.Nope  # noqa: B018


@pytest.mark.integration
def test_import_is_light() -> None:
    code = "import sys, letsfrag; print('discord' in sys.modules, 'redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
