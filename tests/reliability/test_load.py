"""Hundreds of associations and HTTP clients at once: the limits refuse the excess cleanly.

One server (2 workers, ``max_associations = 16`` each, ``[web]
max_concurrent_requests = 8`` each). 300 connections ask for an association
at the same moment and hold it: the excess gets A-ASSOCIATE-RJ
rejected-transient "local limit exceeded", every accepted one stores an
instance successfully. 200 HTTP clients post STOW-RS at once: each gets 200,
or 503 with Retry-After and problem+json, and stores once it retries. The
same round runs twice; the workers' open descriptors come back to where they
were and their memory does not grow from the first round to the second.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

import engine
from engine.synthetic import ct_series, encode
from tests.net._support import Server
from tests.reliability._intact import store_good, worker_figures
from tests.reliability._raw import RawPeer, associate_rq
from tests.reliability.conftest import scaled

Figure = Callable[[str, Any], None]
MAX_ASSOCIATIONS = 16
MAX_REQUESTS = 8
CONFIG = (f"[server]\nmax_associations = {MAX_ASSOCIATIONS}\nnetwork_timeout_s = 30\n"
          f"[web]\nmax_concurrent_requests = {MAX_REQUESTS}\n")  # fmt: skip
ASSOCIATIONS = scaled(300, 1000)
HTTP_CLIENTS = scaled(200, 600)
SETTLE_TIMEOUT_S = 120.0
FD_SLACK = 4
TRANSIENT_LIMIT = (0x02, 0x03, 0x02)  # PS3.8 9.3.4: rejected-transient, provider, local limit


def _association_round(port: int, seed: int) -> Counter[str]:
    """ASSOCIATIONS peers associate at once and hold on until all have an answer."""
    instances = list(ct_series(seed, ASSOCIATIONS, rows=16, columns=16))
    answered = threading.Barrier(ASSOCIATIONS, timeout=SETTLE_TIMEOUT_S)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def one(i: int) -> None:
        peer = RawPeer(port, timeout=SETTLE_TIMEOUT_S)
        try:
            # a third on pynetdicom's path
            peer.sock.sendall(associate_rq(via_pynetdicom=i % 3 == 0))
            kind, body = peer.read_pdu()
            answered.wait()
            if kind == 0x03:
                assert tuple(body[1:4]) == TRANSIENT_LIMIT, body.hex()
                outcome = "rejected-transient"
            else:
                assert kind == 0x02, kind
                assert peer.store(instances[i]) == 0
                outcome = "accepted-and-stored"
                peer.sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
                assert peer.outcome() in {"release", "closed"}
        finally:
            peer.close()
        with lock:
            outcomes[outcome] += 1

    with ThreadPoolExecutor(ASSOCIATIONS) as pool:
        list(pool.map(one, range(ASSOCIATIONS)))
    return outcomes


def _http_round(http_port: int, seed: int) -> tuple[Counter[str], list[str]]:
    """HTTP_CLIENTS post one instance each at once; a 503 retries after its Retry-After."""
    instances = list(ct_series(seed, HTTP_CLIENTS, rows=16, columns=16))
    start = threading.Barrier(HTTP_CLIENTS, timeout=SETTLE_TIMEOUT_S)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    url = f"http://127.0.0.1:{http_port}/dicom-web/studies"

    def one(i: int) -> None:
        boundary = secrets.token_hex(16)
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + encode(instances[i]) + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        headers = {"content-type": ctype}
        with httpx.Client(timeout=SETTLE_TIMEOUT_S) as client:
            start.wait()
            for attempt in range(100):
                rsp = client.post(url, content=body, headers=headers)
                if rsp.status_code != 503:
                    break
                assert rsp.headers["content-type"] == "application/problem+json"
                assert rsp.json()["status"] == 503
                with lock:
                    outcomes["503 then retried"] += attempt == 0
                time.sleep(float(rsp.headers["retry-after"]))
            assert rsp.status_code == 200, (rsp.status_code, rsp.text[:300])
        with lock:
            outcomes["stored"] += 1

    with ThreadPoolExecutor(HTTP_CLIENTS) as pool:
        list(pool.map(one, range(HTTP_CLIENTS)))
    return outcomes, [str(ds.SOPInstanceUID) for ds in instances]


def _settled_fds(pids: list[int], baseline: int) -> int:
    """Open descriptors of the workers once the closed connections are gone (awaited; a
    few may stay: the HTTP server's first connections open its thread pool, a new segment)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        fds = worker_figures(pids)["fds"]
        if fds <= baseline + FD_SLACK or time.monotonic() > deadline:
            return fds
        time.sleep(0.5)


def test_hundreds_of_associations_and_http_clients_are_refused_cleanly_without_leaks(
    tmp_path: Path, figure: Figure
) -> None:
    srv = Server(tmp_path, workers=2, config=CONFIG, http=True).start()
    try:
        store_good(srv.port, tmp_path / "good", seed=3400, count=2)
        pids = sorted(srv.worker_pids())
        start = worker_figures(pids)
        rounds = []
        stored_over_http: list[str] = []
        for r in range(2):
            dicom = _association_round(srv.port, seed=3410 + r)
            http, uids = _http_round(srv.http_port, seed=3420 + r)
            stored_over_http += uids
            fds = _settled_fds(pids, start["fds"])
            rounds.append((dicom, http, fds, worker_figures(pids)["rss_kib"]))
            assert dicom["rejected-transient"] > 0, dicom  # the limit was reached
            assert dicom["accepted-and-stored"] >= MAX_ASSOCIATIONS, dicom
            assert http["503 then retried"] > 0, http
            assert http["stored"] == HTTP_CLIENTS, http
            later = store_good(srv.port, tmp_path / f"later-{r}", seed=3430 + r, count=2)
            assert later  # legitimate stores go on after the storm
        assert sorted(srv.worker_pids()) == pids, "a worker died"
        (_, _, fds1, rss1), (_, _, fds2, rss2) = rounds
        assert fds2 <= start["fds"] + FD_SLACK, (start["fds"], fds1, fds2)
        assert rss2 - rss1 < 32 << 10, f"workers grew {rss2 - rss1} KiB in an identical round"
        for i, (dicom, http, fds, rss) in enumerate(rounds, 1):
            figure(f"round {i} associations", dict(dicom))
            figure(f"round {i} HTTP clients", dict(http))
            figure(f"round {i} worker fds / RSS KiB after", (fds, rss))
        figure("worker fds / RSS KiB at the start", (start["fds"], start["rss_kib"]))
    finally:
        assert srv.stop() == 0, srv.log()[-3000:]
    with engine.open_archive(srv.archive) as archive:
        for uid in stored_over_http:
            archive.get(uid)
