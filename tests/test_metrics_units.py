"""The pure parts of the metrics listener: the ``metrics.listen`` address and its config errors."""

from __future__ import annotations

import pytest

from letsfrag.config import HostConfig
from letsfrag.units import parse_listen


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9464", ("::1", 9464)),
    (":9464", ("0.0.0.0", 9464)),
    ("localhost:0", ("localhost", 0)),
])
def test_listen_addresses_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:abc", "host name:1",
                                  "127.0.0.1:\u00b2"])
def test_bad_listen_addresses_name_the_problem(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_listen(text)


def test_config_refuses_a_bad_listen_address() -> None:
    with pytest.raises(Exception, match="metrics"):
        HostConfig.model_validate({"bot": {"module": "x", "token": "t"}, "metrics": {"listen": "nowhere"}})
    config = HostConfig.model_validate({"bot": {"module": "x", "token": "t"}, "metrics": {"listen": ":9464"}})
    assert config.metrics.listen == ":9464"
