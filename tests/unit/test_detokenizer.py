"""Incremental detokenization: multi-byte characters and stop strings across chunks."""

from __future__ import annotations

from server.engine.detokenizer import IncrementalDetokenizer


class ByteDecoder:
    """Token id = one byte (ids >= 256 are specials that decode to nothing)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def chunks(text: str, sizes: list[int]) -> list[list[int]]:
    data, out, i = list(text.encode()), [], 0
    for n in sizes:
        out.append(data[i : i + n])
        i += n
    out.append(data[i:])
    return out


def run(text: str, sizes: list[int], stop: tuple[str, ...] = ()) -> tuple[list[str], str | None]:
    d = IncrementalDetokenizer(ByteDecoder(), stop)
    parts = chunks(text, sizes)
    pieces = [d.feed(c, final=(i == len(parts) - 1)) for i, c in enumerate(parts)]
    return pieces, d.stopped


def test_multibyte_never_split() -> None:
    text = "héllo 😀 wörld"
    for sizes in ([1] * 20, [2, 3, 1, 4], [7, 1, 1, 1]):
        pieces, _ = run(text, sizes)
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)


def test_stop_string_across_chunks_never_leaks() -> None:
    text = "one two STOP three"
    for sizes in ([1] * 30, [9, 2, 2], [10, 1], [8, 4]):
        pieces, stopped = run(text, sizes, stop=("STOP",))
        assert "".join(pieces) == "one two " and stopped == "STOP"
        assert not any("S" in p for p in pieces)


def test_earliest_of_several_stops_wins_and_prefix_is_released_at_end() -> None:
    pieces, stopped = run("abc XY def XZ", [3, 3, 3], stop=("XZ", "XY"))
    assert "".join(pieces) == "abc " and stopped == "XY"
    pieces, stopped = run("tail ends with X", [5], stop=("XY",))
    assert "".join(pieces) == "tail ends with X" and stopped is None
