"""Prediction ids: what a client quotes to /feedback, and the store's primary key."""

import os
import re
import threading
import time

POOL_BYTES = 4096  # random bytes fetched from the OS at a time: 409 one-row requests' worth


class _RandomPool:
    """The OS's random bytes, fetched a few kilobytes at a time, each byte handed out once.

    ``os.urandom`` lets go of the GIL for its system call, and the event loop then waits for
    it until a busy thread (the log's writer, a model call in a worker) gives it back: up to
    a switch interval (5 ms). Once per request that was 15 % of the loop's samples at 64
    connections (docs/performance.md); once per 4 KiB it is nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self._forget)  # a child never reuses its parent's

    def take(self, count: int) -> bytes:
        with self._lock:
            start = self._offset
            if start + count > len(self._buffer):
                self._buffer = os.urandom(max(POOL_BYTES, count))
                start = 0
            self._offset = start + count
            return self._buffer[start : start + count]

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer, self._offset = b"", 0


_POOL = _RandomPool()


# Per random byte, the same byte with its top bits set to the UUID's version (7, four bits) or
# variant (0b10, two bits): ``bytes.translate`` rewrites every id's byte in one call.
_VERSION_7 = bytes(0x70 | (byte & 0x0F) for byte in range(256))
_VARIANT_10 = bytes(0x80 | (byte & 0x3F) for byte in range(256))


def new_ids(count: int) -> list[str]:
    """``count`` prediction ids: UUIDv7 (RFC 9562) as 32 hex digits.

    74 random bits make an id unguessable; the leading millisecond timestamp makes ids arrive
    in order, so the log's primary-key index grows at its end instead of rewriting a random
    page per row (random ids cut SQLite's insert rate by four as the log grows; see bench/).

    Each id is the timestamp's 12 digits and 10 random bytes, whose first byte carries the
    version and third the variant; the bytes of all ids are rewritten and turned into digits
    in one call each, a quarter of the time per id of building each from an integer.
    """
    millis = time.time_ns() // 1_000_000
    head = f"{millis & 0xFFFF_FFFF_FFFF:012x}"
    noise = bytearray(_POOL.take(10 * count))
    noise[0::10] = noise[0::10].translate(_VERSION_7)
    noise[2::10] = noise[2::10].translate(_VARIANT_10)
    digits = noise.hex()
    return [head + digits[start : start + 20] for start in range(0, 20 * count, 20)]


_OURS = re.compile("[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")
"""The stored form of an id ``new_ids`` makes: 32 lower-case hex digits, version 7, variant 10."""


def issued_at(prediction_id: str) -> float | None:
    """When ``prediction_id`` was issued, in Unix seconds (to the millisecond), read from its
    leading 48-bit timestamp; None for an id ``new_ids`` cannot have made (another UUID
    version, another variant, or not 32 lower-case hex digits).

    A client can forge any timestamp: use it only where a forged one costs that client alone.
    """
    if _OURS.fullmatch(prediction_id) is None:
        return None
    return int(prediction_id[:12], 16) / 1000
