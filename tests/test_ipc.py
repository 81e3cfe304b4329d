"""The IPC line reader: an oversized line is skipped up to its newline, counted, and the stream goes on."""

from __future__ import annotations

from letsfrag.ipc import LineReader, decode, encode


def _feed_all(reader: LineReader, chunks: list[bytes]) -> list[bytes]:
    return [line for chunk in chunks for line in reader.feed(chunk)]


def test_lines_split_across_chunks() -> None:
    reader = LineReader(max_line=100)
    data = encode("hello", pid=1) + encode("heartbeat", ts=2.0)
    chunks = [data[i:i + 7] for i in range(0, len(data), 7)]
    lines = _feed_all(reader, chunks)
    assert [decode(line)["op"] for line in lines] == ["hello", "heartbeat"]  # type: ignore[index]
    assert reader.dropped == 0


def test_an_oversized_line_is_skipped_and_the_next_ones_kept() -> None:
    drops: list[int] = []
    reader = LineReader(max_line=100, on_drop=drops.append)
    huge = encode("error", text="x" * 1000)
    data = encode("hello") + huge + encode("heartbeat", n=1) + encode("heartbeat", n=2)
    for size in (1, 13, 64, 4096):  # the huge line arrives in pieces, or in one chunk with the others
        reader = LineReader(max_line=100, on_drop=drops.append)
        lines = _feed_all(reader, [data[i:i + size] for i in range(0, len(data), size)])
        assert [decode(line) for line in lines] == [
            {"op": "hello"}, {"op": "heartbeat", "n": 1}, {"op": "heartbeat", "n": 2}], size
        assert reader.dropped == 1
    assert drops == [len(huge) - 1] * 4  # its size, newline excluded


def test_a_line_of_exactly_the_limit_is_kept() -> None:
    reader = LineReader(max_line=10)
    assert reader.feed(b"0123456789\n" + b"0123456789A\n" + b"ok\n") == [b"0123456789", b"ok"]
    assert reader.dropped == 1


def test_the_tail_of_a_skipped_line_is_not_mistaken_for_a_message() -> None:
    reader = LineReader(max_line=20)
    tail = encode("stop", reason="x")  # a valid message hidden at the end of an oversized line
    lines = reader.feed(b"y" * 30) + reader.feed(b"z" * 5 + tail) + reader.feed(encode("ready"))
    assert [decode(line) for line in lines] == [{"op": "ready"}]
