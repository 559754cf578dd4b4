"""The supervisor reads a child's pipe in large chunks and splits the bytes into
messages itself; the framing must be exactly ``multiprocessing.connection``'s,
whatever the chunk boundaries, and a message cut in two waits for its rest."""

from __future__ import annotations

import os
import random
from itertools import pairwise
from multiprocessing import Pipe
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dartwing_jobs.worker.pipes import send_message
from dartwing_jobs.worker.supervisor import RAW_CONNECTION, take_messages

MESSAGES: list[Any] = [
    ("ready", 1234),
    ("progress", "job-1", 1, 50.0, "half way: ü ✓"),
    ("done", "job-1", 1, "completed", {"n": [1, 2, 3]}, None, 1.5, 2.25, "host:1"),
    # Above 16 KiB Connection.send writes the header and the body separately.
    ("done", "job-2", 3, "failed", None, {"type": "E", "message": "x" * 40_000,
                                         "traceback": None}, 1.0, 3.0, "host:1"),
    ("progress", "job-3", 2, 0.0, None),
]


def wire_bytes(messages: list[Any]) -> bytes:
    """What a child's ``Connection.send`` of ``messages`` puts on the pipe."""
    reader, writer = Pipe()
    assert isinstance(reader, RAW_CONNECTION)
    for message in messages:
        writer.send(message)
    writer.close()
    chunks = []
    while True:
        chunk = os.read(reader.fileno(), 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


WIRE = wire_bytes(MESSAGES)


def test_whole_stream_at_once() -> None:
    inbox = bytearray(WIRE)
    assert take_messages(inbox) == MESSAGES
    assert inbox == bytearray()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(WIRE)), max_size=12))
def test_any_chunking_gives_the_same_messages(cuts: list[int]) -> None:
    bounds = sorted({0, len(WIRE), *cuts})
    inbox = bytearray()
    got: list[Any] = []
    for start, end in pairwise(bounds):
        inbox += WIRE[start:end]
        got += take_messages(inbox)
    assert got == MESSAGES
    assert inbox == bytearray()


def test_a_cut_message_waits_for_its_rest() -> None:
    first = len(wire_bytes(MESSAGES[:1]))
    inbox = bytearray(WIRE[:first + 3])  # one message and the start of a header
    assert take_messages(inbox) == MESSAGES[:1]
    assert bytes(inbox) == WIRE[first:first + 3]
    inbox += WIRE[first + 3:]
    assert take_messages(inbox) == MESSAGES[1:]


def test_eight_byte_length_header() -> None:
    """Connection.send's frame for a body over 2 GiB (-1, then an 8-byte length),
    built here by hand around a small body."""
    body = wire_bytes([("ready", 7)])[4:]
    frame = (-1).to_bytes(4, "big", signed=True) + len(body).to_bytes(8, "big") + body
    inbox = bytearray(frame[:10])
    assert take_messages(inbox) == []
    inbox += frame[10:] + WIRE[:random.randrange(1, 4)]
    assert take_messages(inbox) == [("ready", 7)]


def test_send_message_frames_as_connection_send_does() -> None:
    """Both ends pickle with the C pickler (``send_message``); the frame must stay
    the one ``Connection.recv`` and ``take_messages`` read."""
    reader, writer = Pipe()
    assert isinstance(reader, RAW_CONNECTION)
    for message in MESSAGES:
        send_message(writer, message)
    assert [reader.recv() for _ in MESSAGES] == MESSAGES
    for message in MESSAGES:
        send_message(writer, message)
    writer.close()
    inbox = bytearray()
    while chunk := os.read(reader.fileno(), 1 << 20):
        inbox += chunk
    assert take_messages(inbox) == MESSAGES
    assert inbox == bytearray()
