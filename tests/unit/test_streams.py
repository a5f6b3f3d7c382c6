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
    """The override asks aiokafka to seek exactly the never-committed partitions to their start,
    and expects each partition's next record where reading resumes: the committed offset, or
    the log's start for a partition never committed."""
    app = StreamApp("carebus-test-streams", broker="kafka://127.0.0.1:1", store="memory://")
    consumer: Any = app.consumer
    # a restarted worker seeks before its first fetch: no NextOffsets exist yet
    assert not isinstance(consumer.next_offsets, streams.NextOffsets)
    thread: Any = consumer._new_consumer_thread()
    events = [TopicPartition("care.events.v1", p) for p in range(3)]
    sought: list[tuple[TopicPartition, ...]] = []

    class FakeAiokafka:
        async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
            return {events[0]: None, events[1]: 42, events[2]: None}

        async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
            sought.append(partitions)

        async def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[Any, int]:
            # retention removed the first 7 records of partition 2
            return {tp: 7 if tp.partition == 2 else 0 for tp in partitions}

    fake = FakeAiokafka()

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    monkeypatch.setattr(thread, "_ensure_consumer", lambda: fake)
    monkeypatch.setattr(thread, "call_thread", call_thread)
    committed = asyncio.run(thread.seek_to_committed())
    assert committed == {events[0]: None, events[1]: 42, events[2]: None}
    assert sought == [(events[0], events[2])]
    offsets = consumer.next_offsets
    # the first record read of each partition: anything later is a skip from where it resumes
    assert [offsets.skipped(tp, 100) for tp in events] == [0, 42, 7]
    assert [offsets.skipped(tp, start) for tp, start in zip(events, (0, 42, 7), strict=True)] == [
        None,
        None,
        None,
    ]


TP0 = TopicPartition("care.events.v1", 0)


def test_a_record_past_the_next_expected_one_is_a_skip_from_that_one() -> None:
    offsets = streams.NextOffsets()
    offsets.expect(TP0, 28)  # sought to the committed offset: 28 is still to read
    assert offsets.skipped(TP0, 44) == 28
    assert offsets.skipped(TP0, 28) is None
    offsets.handed_on(TP0, 28)
    # 28 was handed on: 29 is next, not a skip (faust's read offset would say 28 again here)
    assert offsets.skipped(TP0, 29) is None
    offsets.handed_on(TP0, 29)
    assert offsets.skipped(TP0, 44) == 30


def test_a_record_read_again_moves_nothing_back() -> None:
    offsets = streams.NextOffsets()
    offsets.handed_on(TP0, 40)
    offsets.handed_on(TP0, 12)  # a re-read after a seek back
    assert offsets.skipped(TP0, 41) is None
    assert offsets.skipped(TP0, 42) == 41


def test_a_partition_nothing_is_known_of_has_nothing_to_compare_with() -> None:
    offsets = streams.NextOffsets()
    assert offsets.skipped(TP0, 44) is None
    offsets.handed_on(TP0, 44)
    offsets.forget([TP0])  # revoked: its next assignment starts from a seek again
    assert offsets.skipped(TP0, 90) is None


def test_a_table_write_goes_to_the_partition_aiokafkas_partitioner_picks() -> None:
    """Without asking the producer's metadata: the partition of the person's events."""
    from aiokafka.partitioner import DefaultPartitioner

    app = StreamApp(
        "carebus-test-streams",
        broker="kafka://127.0.0.1:1",
        store="memory://",
        Table=streams.KeyPartitionedTable,
        topic_partitions=4,
    )
    table: Any = app.Table("persons", partitions=4, key_type=bytes, use_partitioner=True)
    assert isinstance(table, streams.KeyPartitionedTable)
    keys = [f"{n:064x}".encode() for n in range(200)]
    picked = [table.partition_for_key(key) for key in keys]
    assert picked == [DefaultPartitioner()(key, [0, 1, 2, 3], []) for key in keys]
    assert set(picked) == {0, 1, 2, 3}
