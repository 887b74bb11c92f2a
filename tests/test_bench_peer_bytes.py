"""``bench/artifact_throughput.py PeerBytes``: what the bench reports as the bytes the server
(and the signing proxy) handled is counted on this process's sockets, per peer port, both
directions; other peers are not counted, and socket.socket is as before once it is done."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bench.artifact_throughput import PeerBytes


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server on 127.0.0.1 (one connection at a time), its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                while data := connection.recv(65536):
                    connection.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(10)


def round_trip(address: tuple[str, int], payload: bytes) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(payload[:10])
        sock.send(payload[10:])
        got = bytearray()
        while len(got) < len(payload):
            buffer = bytearray(4096)
            got += buffer[: sock.recv_into(buffer)] if len(got) % 2 else sock.recv(4096)
        assert bytes(got) == payload


def test_counts_both_directions_per_peer_and_nothing_else(echo: tuple[str, int]) -> None:
    other = socket.create_server(("127.0.0.1", 0))  # a peer not talked to (the proxy, say)
    counter = PeerBytes({"server": echo, "proxy": other.getsockname()})
    other.close()
    payload = bytes(range(256)) * 64  # 16 KiB
    with counter.counting() as counted:
        assert counted is counter
        round_trip(echo, payload)
    assert counter.bytes == {"server": 2 * len(payload), "proxy": 0}
    round_trip(echo, payload)  # after: not counted, and the methods are _socket.socket's again
    assert counter.bytes["server"] == 2 * len(payload)
    assert not {"send", "sendall", "recv", "recv_into"} & set(vars(socket.socket))


def test_one_counter_at_a_time(echo: tuple[str, int]) -> None:
    with (
        PeerBytes({"server": echo}).counting(),
        pytest.raises(RuntimeError, match="one PeerBytes at a time"),
        PeerBytes({"server": echo}).counting(),
    ):
        pass
    assert not {"send", "sendall", "recv", "recv_into"} & set(vars(socket.socket))
