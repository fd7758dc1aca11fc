"""New request ids: shaped as version-4 UUIDs, unique within a process and across a fork."""

from __future__ import annotations

import os
import uuid

from gateway.observability.request_facts import RequestIds, request_id_from


def test_new_ids_are_distinct_version_4_uuids() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    for text in made[:100]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_two_generators_do_not_share_ids() -> None:
    first, second = RequestIds(), RequestIds()
    assert {first.new() for _ in range(1000)}.isdisjoint(second.new() for _ in range(1000))


def test_a_forked_child_draws_its_own_ids() -> None:
    ids = RequestIds()
    parent = ids.new()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next id, then leave at once
        os.write(write, ids.new().encode())
        os._exit(0)
    os.close(write)
    from_child = os.read(read, 64).decode()
    os.waitpid(child, 0)
    os.close(read)
    assert from_child[:24] != parent[:24], "the child kept the parent's random part"
    assert from_child != ids.new()


def test_a_valid_incoming_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_from(b"trace-42") == "trace-42"
    fresh = request_id_from(b"not valid!")
    assert uuid.UUID(fresh).version == 4
