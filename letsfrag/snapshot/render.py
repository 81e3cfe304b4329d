"""Pure formatting of snapshot rows into table cells, shared by ``letsfrag-top`` and ``letsfrag status``.

No Textual here: only :mod:`rich` text, so the status command does not import the TUI framework.

Every string read from Redis (host ids, states, errors, event messages) is anyone's who can write to Redis:
it goes through :func:`plain` — a rich ``Text`` (never parsed as markup, so ``[/x]`` or ``[link=...]`` show
literally) with control characters (terminal escapes, newlines) shown as escapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.text import Text

from ..events import Event
from ..logs import escape_control
from ..units import format_duration, format_size
from .picture import ClusterRow, HandoverInfo, HostRow, Snapshot, operation_text

__all__ = [
    "CLUSTER_COLUMNS", "CLUSTER_SORTS", "HOST_COLUMNS", "cluster_cells", "event_cells", "handover_text",
    "host_cells", "matches", "plain", "plain_lines", "state_style", "summary_text",
]

STATE_STYLES: dict[str, str] = {
    "ready": "green", "up": "green", "starting": "cyan", "pending": "cyan", "leaving": "cyan",
    "degraded": "yellow", "stale": "yellow", "backoff": "yellow", "draining": "yellow",
    "stopping": "dim", "stopped": "dim", "handing over": "bold cyan", "switching": "bold cyan",
    "failed": "bold red", "unassigned": "bold red", "lost": "bold red",
}
SEVERITY_STYLES = {"info": "", "warning": "yellow", "error": "bold red"}

#: (column key, label) in display order
HOST_COLUMNS: list[tuple[str, str]] = [
    ("id", "Host"), ("hostname", "Hostname"), ("state", "State"), ("lease", "Lease age"),
    ("clusters", "Clusters"), ("shards", "Shards"), ("cpu", "CPU %"), ("rss", "RSS"), ("uptime", "Uptime"),
]
CLUSTER_COLUMNS: list[tuple[str, str]] = [
    ("id", "#"), ("host", "Host"), ("range", "Shards"), ("ready", "Ready"), ("state", "State"), ("pid", "PID"),
    ("restarts", "Restarts"), ("uptime", "Uptime"), ("cpu", "CPU %"), ("rss", "RSS"), ("guilds", "Guilds"),
    ("latency", "Latency"), ("heartbeat", "Heartbeat"), ("error", "Last error"),
]

_STATE_ORDER = {s: i for i, s in enumerate(
    ["unassigned", "failed", "backoff", "stale", "degraded", "stopping", "stopped", "pending", "starting", "ready"])}

#: sort name -> key over a cluster row (``s`` in the dashboard cycles through them)
CLUSTER_SORTS: dict[str, Callable[[ClusterRow], Any]] = {
    "id": lambda c: c.id,
    "state": lambda c: (_STATE_ORDER.get(c.state, 50), c.id),
    "host": lambda c: (c.host or "", c.id),
    "restarts": lambda c: (-c.restarts, c.id),
    "cpu": lambda c: (-(c.cpu_percent or 0), c.id),
    "rss": lambda c: (-(c.rss or 0), c.id),
    "latency": lambda c: (-(c.latency or 0), c.id),
}


def plain(value: object, style: str = "") -> Text:
    """``value`` as literal text: no markup, control characters (ESC, newline...) as visible escapes."""
    return Text(escape_control(str(value)), style=style)


def plain_lines(value: object, style: str = "") -> Text:
    """Like :func:`plain`, but keeps line breaks (a traceback in the cluster view)."""
    return Text("\n".join(escape_control(line) for line in str(value).splitlines()), style=style)


def state_style(state: str) -> str:
    return STATE_STYLES.get(state, "")


def _dur(value: float | None) -> str:
    return "–" if value is None else format_duration(value)


def _num(value: float | int | None, fmt: str = "{:.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def host_cells(host: HostRow) -> tuple[Text | str, ...]:
    """Cells of one hosts-table row, in :data:`HOST_COLUMNS` order."""
    capacity = f"/{host.capacity}" if host.capacity is not None else ""
    successors = f"+{len(host.successors)}" if host.successors else ""
    return (
        plain(host.id), plain(host.hostname), plain(host.state, style=state_style(host.state)),
        Text(_dur(host.lease_age), style="" if host.lease else "red"),
        f"{len(host.clusters)}{successors}{capacity}", str(host.shards), _num(host.cpu_percent, "{:.1f}"),
        "–" if host.rss is None else format_size(host.rss), _dur(host.uptime),
    )


def cluster_cells(cluster: ClusterRow) -> tuple[Text | str, ...]:
    """Cells of one clusters-table row, in :data:`CLUSTER_COLUMNS` order (unassigned rows are all red)."""
    total = len(cluster.shard_ids)
    ready_style = "green" if total and cluster.shards_ready == total else "yellow" if cluster.shards_ready else "red"
    if not cluster.assigned:
        red = "bold red"
        return (Text(str(cluster.id), style=red), Text("–", style=red), plain(cluster.shard_range, style=red),
                Text(f"0/{total}", style=red), Text("unassigned", style=red), "", "", "", "", "", "", "", "",
                plain(cluster.last_error or "no host has capacity for it", style=red))
    latency = "–" if cluster.latency is None else f"{cluster.latency * 1000:.0f}ms"
    beat = Text(_dur(cluster.heartbeat_age), style=cluster.heartbeat_colour)
    error = cluster.last_error or (cluster.reason if cluster.state != "ready" else "")
    host: Text | str = plain(cluster.host or "–")
    state: Text | str = plain(cluster.state, style=state_style(cluster.state))
    pid: Text | str = _num(cluster.pid) if cluster.pid else "–"
    handover = cluster.handover
    if handover is not None:
        host = plain(handover.from_host if handover.from_host == handover.host
                     else f"{handover.from_host} → {handover.host}")
        state = plain(handover.state, style=state_style(handover.state))
        pid = f"{_num(handover.old_pid) if handover.old_pid else '–'} → " \
              f"{_num(handover.new_pid) if handover.new_pid else '–'}"
        error = cluster.last_error or handover_text(handover)
    return (
        str(cluster.id), host, plain(cluster.shard_range),
        Text(f"{cluster.shards_ready}/{total}", style=ready_style),
        state, pid,
        Text(str(cluster.restarts), style="yellow" if cluster.restarts else ""), _dur(cluster.uptime),
        _num(cluster.cpu_percent, "{:.1f}"), _memory_cell(cluster),
        _num(cluster.guilds), latency, beat,
        plain(error[:80], style="cyan" if handover is not None and not cluster.last_error else "red" if error else ""),
    )


def handover_text(handover: HandoverInfo) -> str:
    """``rolling to h1 epoch 12, successor ready, 3s`` for a cluster's handover in progress."""
    parts = [f"{handover.reason or 'handover'} to {handover.host} epoch {handover.epoch}"]
    if handover.successor:
        parts.append(f"successor {handover.successor}")
    if handover.age is not None:
        parts.append(_dur(handover.age))
    return ", ".join(parts)


def _memory_cell(cluster: ClusterRow) -> str:
    """RSS, and the PSS beside it when the host reports it (a forked cluster shares most of its RSS)."""
    if cluster.rss is None:
        return "–"
    if cluster.pss is None:
        return format_size(cluster.rss)
    return f"{format_size(cluster.rss)} (PSS {format_size(cluster.pss)})"


def event_cells(event: Event, *, utc: bool = False) -> tuple[Text | str, ...]:
    """(time, severity, source, message) of one event; the time is HH:MM:SS, local or ``utc``."""
    clock = time.gmtime(event.ts) if utc else time.localtime(event.ts)
    style = SEVERITY_STYLES.get(str(event.severity), "")
    return (time.strftime("%H:%M:%S", clock), plain(event.severity, style=style), plain(event.source),
            plain(event.message, style=style))


def matches(cells: tuple[Text | str, ...], needle: str) -> bool:
    """True when ``needle`` (lower-case) occurs in any cell."""
    return not needle or any(needle in str(cell).lower() for cell in cells)


def summary_text(snapshot: Snapshot | None, address: str, *, connected: bool = True,
                 data_age: float | None = None, paused: bool = False) -> Text:
    """The one-line header: namespace, Redis, leader, hosts, clusters, shards, identify queue, errors."""
    text = Text()
    if snapshot is None:
        text.append(f"Redis {escape_control(address)} ", style="bold")
        text.append("connecting…" if connected else "unreachable", style="yellow" if connected else "bold red")
        return text
    s = snapshot.summary()
    text.append(escape_control(snapshot.namespace), style="bold")
    text.append("  Redis ")
    text.append(escape_control(address), style="bold")
    text.append(" ")
    if connected:
        text.append("●", style="green")
    else:
        text.append(f"● down (data {_dur(data_age)} old)", style="bold red")
    leader = snapshot.leader.id
    text.append("  leader ")
    text.append(escape_control(leader) if leader else "none", style="bold" if leader else "bold red")

    def ratio(label: str, good: int, total: int) -> None:
        text.append(f"  {label} ")
        text.append(f"{good}/{total}", style="green" if good == total and total else "yellow" if good else "red")

    ratio("hosts", s["hosts_up"], s["hosts_total"])
    ratio("clusters", s["clusters_ready"], s["clusters_total"])
    ratio("shards", s["shards_ready"], s["shards_total"])
    if s.get("generation") is not None:
        text.append(f"  generation {s['generation']}")
    text.append("  identify queue ")
    text.append(str(s["identify_depth"]), style="yellow" if s["identify_depth"] else "")
    budget = s.get("identify_budget")
    if budget:
        remaining, total = int(budget["remaining"]), int(budget["total"])
        text.append("  budget ")
        text.append(f"{remaining}/{total}", style="bold red" if remaining < total * 0.1 else "")
    text.append("  errors 10m ")
    text.append(str(s["errors_10m"]), style="bold red" if s["errors_10m"] else "green")
    handing = sum(1 for c in snapshot.clusters if c.handover is not None)
    if handing:
        text.append("  handovers ")
        text.append(str(handing), style="bold cyan")
    operation = operation_text(snapshot.leader.operation)
    if operation:
        text.append("  ")
        text.append(escape_control(operation), style="bold cyan")
    if paused:
        text.append("  PAUSED", style="bold reverse yellow")
    return text
