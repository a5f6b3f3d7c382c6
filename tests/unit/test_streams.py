"""The stream processors' faust app re-reads partitions nobody has committed (faust #629)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from carebus.adapters import streams
from carebus.adapters.streams import StreamApp, never_committed

CHANGELOG = "carebus-router-persons-changelog"


def test_partitions_never_committed_are_rewound_and_nothing_else() -> None:
    committed = {
        TopicPartition("care.events.v1", 0): None,  # never committed: rewound
        TopicPartition("care.events.v1", 1): 0,  # committed at 0: seek_to_committed skips it
        TopicPartition("care.events.v1", 2): 1234,  # committed: aiokafka already sought it
        TopicPartition(CHANGELOG, 0): None,  # faust's recovery reads changelogs itself
        TopicPartition("carebus-router-__assignor-__leader", 0): None,
    }
    assert never_committed(committed, frozenset({CHANGELOG})) == [
        TopicPartition("care.events.v1", 0),
        TopicPartition("care.events.v1", 1),
    ]


def test_the_app_consumer_uses_the_rewinding_thread() -> None:
    app = StreamApp("carebus-test-streams", broker="kafka://127.0.0.1:1", store="memory://")
    consumer: Any = app.consumer
    assert isinstance(consumer, streams._Consumer)
    thread = consumer._new_consumer_thread()
    assert isinstance(thread, streams._ConsumerThread)


def test_seek_to_committed_rewinds_what_aiokafka_left(monkeypatch: Any) -> None:
    """The override asks aiokafka to seek exactly the never-committed partitions to their start."""
    app = StreamApp("carebus-test-streams", broker="kafka://127.0.0.1:1", store="memory://")
    thread: Any = app.consumer._new_consumer_thread()  # type: ignore[attr-defined]
    events = [TopicPartition("care.events.v1", p) for p in range(3)]
    sought: list[tuple[TopicPartition, ...]] = []

    class FakeAiokafka:
        async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
            return {events[0]: None, events[1]: 42, events[2]: None}

        async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
            sought.append(partitions)

    fake = FakeAiokafka()

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    monkeypatch.setattr(thread, "_ensure_consumer", lambda: fake)
    monkeypatch.setattr(thread, "call_thread", call_thread)
    committed = asyncio.run(thread.seek_to_committed())
    assert committed == {events[0]: None, events[1]: 42, events[2]: None}
    assert sought == [(events[0], events[2])]


def test_a_hole_after_the_last_record_read_is_a_skip_from_the_record_after_it() -> None:
    assert streams.skipped_from(27, 20, 44) == 28
    assert streams.skipped_from(27, 20, 28) is None


def test_right_after_a_seek_to_the_committed_offset_that_offset_is_still_to_read() -> None:
    # perform_seek sets the read offset to the committed one: 28 has not been handed on yet.
    assert streams.skipped_from(28, 28, 44) == 28
    assert streams.skipped_from(28, 28, 28) is None
    assert streams.skipped_from(28, 28, 29) == 28


def test_a_fresh_assignment_has_nothing_to_compare_with() -> None:
    assert streams.skipped_from(None, None, 44) is None
    assert streams.skipped_from(None, 10, 44) is None
