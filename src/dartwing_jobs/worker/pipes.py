"""Messages between the supervisor and its children, over ``multiprocessing`` pipes."""

from __future__ import annotations

import pickle
from multiprocessing.connection import Connection
from typing import Any


def frame(message: tuple[Any, ...]) -> bytes:
    """A message as ``send_message`` sends it (for a caller that must know its
    size first)."""
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def send_message(conn: Connection, message: tuple[Any, ...]) -> None:
    """``conn.send(message)``, pickled by the C pickler: ``Connection.send`` builds
    a ForkingPickler per message, which a worker busy with short jobs pays for
    thousands of times a second on both ends. The frame is the same, so
    ``Connection.recv`` reads it. Messages hold plain values only."""
    conn.send_bytes(frame(message))
