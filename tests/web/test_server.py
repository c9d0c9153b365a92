"""The real server: run_http on a free port, streaming a large study with flat memory, stopping."""

from __future__ import annotations

import socket
import threading
import tracemalloc
from pathlib import Path

import httpx
import pytest

from engine.archive import open_archive
from engine.synthetic import ct_series, encode
from engine.web.server import _listen, run_http
from engine.web.settings import WebSettings

SLICES = 300  # 300 x 512 x 512 x 2 bytes: 157 MB of pixels


def test_large_study_streams_with_flat_memory(tmp_path: Path) -> None:
    archive = open_archive(tmp_path / "a", durability="none")
    stop = threading.Event()
    try:
        study = None
        for ds in ct_series(21, SLICES, rows=512, columns=512):
            study = ds.StudyInstanceUID
            archive.store(encode(ds))
        server = run_http(archive, "127.0.0.1", 0, stop, WebSettings())
        url = f"http://127.0.0.1:{server.port}/dicom-web/studies/{study}"
        tracemalloc.start()
        received = 0
        with httpx.stream("GET", url, timeout=60) as r:
            assert r.status_code == 200
            for chunk in r.iter_bytes(1 << 20):
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert received > SLICES * 512 * 512 * 2
        print(f"peak {peak / 1e6:.1f} MB for {received / 1e6:.0f} MB")
        assert peak < 40 << 20, f"peak {peak / 1e6:.0f} MB while {received / 1e6:.0f} MB went out"
    finally:
        stop.set()
        archive.close()


def test_stop_event_stops_the_server(tmp_path: Path) -> None:
    archive = open_archive(tmp_path / "a", durability="none")
    stop = threading.Event()
    server = run_http(archive, "127.0.0.1", 0, stop, WebSettings())
    assert httpx.get(f"http://127.0.0.1:{server.port}/dicom-web/studies").json() == []
    stop.set()
    server.join(10)
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/dicom-web/studies", timeout=2)
    archive.close()


def test_a_taken_port_is_an_error(tmp_path: Path) -> None:
    import socket

    archive = open_archive(tmp_path / "a", durability="none")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(OSError):
            run_http(archive, "127.0.0.1", taken.getsockname()[1], threading.Event())
    finally:
        taken.close()
        archive.close()


def test_listening_socket_disables_nagle() -> None:
    """Accepted connections inherit TCP_NODELAY from the listener (Linux); uvicorn sets none.

    Without it every response written as head then body waited for the
    client's delayed ACK: 40 ms a QIDO request, measured in bench_web.
    """
    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client = socket.create_connection(sock.getsockname(), timeout=30)
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()


def test_accepted_connections_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with Nagle on, every
    response of more than one write waited ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from engine.web.server import _listen

    listener = _listen("127.0.0.1", 0)

    async def accepted_nodelay() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            return await asyncio.wait_for(got, 60)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accepted_nodelay()) != 0
