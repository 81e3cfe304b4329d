"""What a part of the supervisor may ask of the shell: :class:`Shell`, which :class:`ClusterManager` implements.

The supervisor is a pure core and a shell. The core is the cluster lifecycle
(:class:`letsfrag.supervisor.lifecycle.Lifecycle`: inputs and the time in, effects out, no I/O); the shell is the
manager, which keeps the processes, timers and tasks by cluster id and carries the effects out. The state they
share is one object with public fields (:class:`letsfrag.supervisor.state.HostState`). The manager's parts that
are not decisions about a cluster's life — the operator commands (``SupervisorCommands``: replies and waits) and the
successors of planned handovers (``SuccessorBook``) — are given the state and the shell, and ask the shell through
this small interface; a part never touches a private attribute of the manager, and the manager calls only
public methods of its parts (``tests/test_layers.py`` checks both).

A Protocol rather than a bag of callbacks: the parts ask for about fifteen actions, the manager is the only
implementation, and a typed interface documents each action once (mypy checks the manager against it where it
passes itself in).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from letsfrag.bus import Bus
    from letsfrag.clock import Clock
    from letsfrag.config import HostConfig
    from letsfrag.contract.records import LayoutRecord
    from letsfrag.events import Severity
    from letsfrag.supervisor.host import HostAgent
    from letsfrag.supervisor.lifecycle import Promotion
    from letsfrag.supervisor.prefork import Launcher
    from letsfrag.supervisor.process import ClusterProcess
    from letsfrag.supervisor.publish import Publisher
    from letsfrag.supervisor.state import ClusterRecord

__all__ = ["Shell"]


class Shell(Protocol):
    """The supervisor's shell as its parts see it (implemented by :class:`ClusterManager`).

    Every method runs inside the decision loop unless it says otherwise.
    """

    config: HostConfig
    host_id: str
    clock: Clock
    handle_signals: bool
    #: None until :meth:`ClusterManager.start` connected
    publisher: Publisher | None
    agent: HostAgent | None
    launcher: Launcher | None

    @property
    def bus(self) -> Bus:
        """The supervisor's bus connection (once started)."""

    @property
    def incarnation(self) -> str:
        """This supervisor run's incarnation (empty before it registered)."""

    # ---------------------------------------------------------------------------------- reporting

    def event(self, severity: Severity, kind: str, message: str, **context: Any) -> None:
        """Emit an operator event (published to ``{ns}:events``)."""

    def fire(self, name: str, *args: Any) -> None:
        """Call the user's callbacks of ``name`` (``cluster_create``, ``cluster_ready`` ...)."""

    def pulse(self) -> None:
        """Something changed: wake :meth:`wait_for`, fire ``ready`` once every granted cluster is READY."""

    def running_json(self) -> str:
        """The host record's ``running`` field, as of now."""

    # ---------------------------------------------------------------------------------- processes

    def record_of(self, cluster_id: int) -> ClusterRecord:
        """The record of ``cluster_id``, created (with its restart tracker) on first use."""

    def next_token(self) -> int:
        """A new process token (unique per spawned process, so late events find their process)."""

    #: each cluster's process (possibly stopping), by cluster id
    processes: dict[int, ClusterProcess]

    async def promote(self, cluster_id: int, process: ClusterProcess, successor: Promotion) -> None:
        """``process`` (a successor) is now the cluster's process: the lifecycle's ``promote``, carried out."""

    async def launch(self, cluster_id: int, shard_ids: tuple[int, ...], epoch: int, token: int, *,
                     handover: bool = False, layout: LayoutRecord | None = None,
                     dead_runs: tuple[int, ...] = ()) -> ClusterProcess:
        """Start one process of ``cluster_id`` (raises ``OSError``)."""

    def program(self) -> str:
        """What is started for a cluster, for messages."""

    def confirm_gone_later(self, process: ClusterProcess) -> None:
        """After an exit: make sure, in the background, that nothing of the process tree is left."""

    async def restart_cluster(self, cluster_id: int) -> tuple[bool, str, int]:
        """Begin an operator's restart of one cluster: ``(ok, message, spawns before)``."""

    # ---------------------------------------------------------------------------------- the loop and tasks

    def post(self, item: Any) -> None:
        """Put an item (a ``Call``, an event) on the decision loop's queue; safe from any task."""

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` inside the decision loop and return its result (called from outside the loop)."""

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` is true, re-checking at every change (called from outside the loop)."""

    def background(self, awaitable: Awaitable[Any]) -> None:
        """Run ``awaitable`` as a background task (cancelled when the supervisor closes)."""

    async def close(self, *, force: bool = False) -> None:
        """Close the supervisor (see :meth:`ClusterManager.close`)."""
