"""DrainWatch over a real TCP connection: a peer reading slowly is busy, a stalled one idle."""

from __future__ import annotations

import socket
import time

from engine.net.transport import DrainWatch, unacked_bytes


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def _wait_settled(sock: socket.socket) -> int:
    """The send queue once it stops changing (the kernel has done what it can)."""
    last = -1
    while (now := unacked_bytes(sock)) != last:
        last = now
        time.sleep(0.05)
    return now


def test_a_stalled_peer_is_idle_and_a_reading_one_is_not() -> None:
    sender, reader = _pair()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)  # a few KB to drain, not MB
    sender.setblocking(False)
    try:
        sent = 0
        while True:  # fill both kernels' buffers: the rest waits in our send queue
            try:
                sent += sender.send(b"x" * 8192)
            except BlockingIOError:
                break
        watch = DrainWatch(sender)
        assert _wait_settled(sender) > 0
        assert watch()  # the first timeout with bytes queued: give the peer its chance
        assert not watch()  # nothing left the queue since: a stalled peer
        got = 0
        while got < sent:  # the peer reads everything
            got += len(reader.recv(1 << 20))
        assert _wait_settled(sender) == 0
        assert watch()  # it drained since the last look: once more
        assert not watch()  # drained and silent: idle
    finally:
        sender.close()
        reader.close()


def test_a_socket_that_is_not_tcp_lets_the_timeout_stand() -> None:
    a, b = socket.socketpair()
    a.close()
    b.close()
    assert not DrainWatch(a)()
