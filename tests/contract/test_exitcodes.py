"""Exit and gateway close codes: one definition shared by the product and the simulator."""

from __future__ import annotations

from letsfrag.contract.exitcodes import FATAL_CLOSE_CODES, CloseCode
from letsfrag.sim import client_ops, core, gateway, protocol


def test_the_simulator_sends_the_products_close_codes() -> None:
    assert not hasattr(protocol, "CloseCode")  # one definition, the contract's
    assert core.CloseCode is client_ops.CloseCode is gateway.CloseCode is CloseCode


def test_fatal_close_codes_are_discords_do_not_reconnect_codes() -> None:
    assert {c for c in CloseCode if c.is_fatal} == {4004, 4010, 4011, 4012, 4013, 4014} == FATAL_CLOSE_CODES
    assert 4004 in FATAL_CLOSE_CODES and 4000 not in FATAL_CLOSE_CODES  # the client compares plain ints
    assert not CloseCode.SESSION_TIMED_OUT.is_fatal and not CloseCode.RATE_LIMITED.is_fatal
