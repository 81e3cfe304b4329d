"""Ownership verdicts of a reshard (letsfrag.contract.reshard): a new generation's gated cluster, the switch, the
retired one."""

from __future__ import annotations

from letsfrag.cluster.guard import Ownership, decide_ownership
from letsfrag.contract.handover import HandoverRecord, HandoverState
from letsfrag.contract.records import Grant

OLD = {"shard_count": "8", "shards_per_cluster": "4", "adopting": None, "generation": None, "cluster_base": None}
NEW = {"shard_count": "16", "shards_per_cluster": "4", "adopting": None, "generation": "2", "cluster_base": "2"}


def _record(state: HandoverState = HandoverState.PREPARING, epoch: int = 9) -> str:
    return HandoverRecord(cluster=3, host="h1", epoch=epoch, from_host="", from_epoch=0, reason="reshard",
                          state=state, started=1.0, deadline=99.0, generation=2, shard_count=16,
                          shards_per_cluster=4, cluster_base=2).to_json()


def judge(cluster: int, layout: dict[str, str | None], assignment: str | None, *, handover: str | None = None,
          successor: bool = False, shards: tuple[int, ...] = (4, 5, 6, 7), epoch: int = 9) -> Ownership:
    return decide_ownership(assignment, "inc", 4000, cluster_id=cluster, host_id="h1", epoch=epoch, incarnation="inc",
                            default_ttl=10.0, layout=layout, shard_ids=shards, handover=handover, successor=successor)


def test_a_new_generations_cluster_is_a_gated_successor_before_the_switch() -> None:
    verdict = judge(3, OLD, None, handover=_record(), successor=True)
    assert verdict.successor and not verdict.owner and not verdict.fenced and "generation 2" in verdict.reason


def test_without_its_record_it_is_fenced_rollback() -> None:
    assert judge(3, OLD, None, successor=True).fenced
    assert judge(3, OLD, None, handover=_record(epoch=8), successor=True).fenced  # another epoch's record


def test_after_the_switch_it_owns_its_shards_and_is_exclusive_once_the_record_is_gone() -> None:
    grant = Grant("h1", 9).to_json()
    switched = judge(3, NEW, grant, handover=_record(HandoverState.SWITCHED), successor=True)
    assert switched.owner and not switched.exclusive
    alone = judge(3, NEW, grant, successor=True)
    assert alone.owner and alone.exclusive


def test_the_old_generation_serves_until_stopped_after_the_switch() -> None:
    verdict = judge(1, NEW, None, epoch=4)
    assert verdict.owner and verdict.handed_over and "retired" in verdict.reason
    lost_lease = decide_ownership(None, None, -2, cluster_id=1, host_id="h1", epoch=4, incarnation="inc",
                                  default_ttl=10.0, layout=NEW, shard_ids=(4, 5, 6, 7))
    assert lost_lease.fenced


def test_before_the_switch_the_old_generation_is_the_owner_and_a_new_unrelated_id_is_not() -> None:
    assert judge(1, OLD, Grant("h1", 4).to_json(), epoch=4).owner
    assert not judge(3, OLD, None).owner  # not a successor: no grant, no record
