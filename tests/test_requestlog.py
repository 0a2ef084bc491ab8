"""The request log (`gateway.requestlog`): one JSON line per state-changing request, carrying the request
id the response also carries, the participant, the route template and the result code, and nothing secret;
read back from the real server's log records and the file its writer thread writes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway import requestlog
from gateway.auth import SIGNATURE_HEADER, Role
from gateway.requestlog import LOGGER_NAME
from gateway.testing import running_exchange


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [msgspec.json.decode(r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME]


def _request_id(reply: Any) -> str:
    """The X-Request-Id header, whatever its case on the wire."""
    return next(v for k, v in reply.headers.items() if k.lower() == "x-request-id")


async def test_one_line_per_state_changing_request_with_its_id_and_nothing_secret(
        fresh_database_url: Any, caplog: pytest.LogCaptureFixture) -> None:
    dsn = await fresh_database_url()
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    async with running_exchange(dsn) as ex:
        await ex.list_instrument("LOG-1")
        operator_id = (await ex.operator.get("/v1/me")).json()["participant_id"]
        buyer = await ex.register(Role.BUYER, "买家", id_number_masked="5002**********4321",
                                  bank_account="6217000099998888")
        caplog.clear()
        order = {"client_order_id": "log-1", "instrument": "LOG-1", "side": "buy", "price_fen": 2800,
                 "quantity_heads": 2}
        placed = await buyer.post("/v1/orders", json=order, headers={"X-Request-Id": "client.req-1"})
        off_tick = await buyer.post("/v1/orders", json={**order, "client_order_id": "log-2", "price_fen": 2805})
        order_id = placed.json()["order_id"]
        cancelled = await buyer.request("DELETE", f"/v1/orders/{order_id}", headers={"X-Request-Id": "bad id!"})
        listed = await buyer.get("/v1/orders")
        forged = await ex.client(buyer.api_key, "0" * 64).post("/v1/orders", json={**order, "client_order_id": "x"})
        issued = await ex.operator.post("/v1/admin/participants", json={
            "role": "farmer", "name": "张三", "id_number_masked": "5002**********9999",
            "bank_account": "6217000011117777"})
    assert (placed.status, off_tick.status, cancelled.status, listed.status, forged.status, issued.status) == (
        201, 422, 200, 200, 401, 201)
    lines = _lines(caplog)
    assert [set(line) for line in lines] == [{"ts", "request_id", "method", "route", "participant_id", "status",
                                             "code", "duration_ms"}] * 5  # the GET is not logged
    assert [(ln["method"], ln["route"], ln["participant_id"], ln["status"], ln["code"]) for ln in lines] == [
        ("POST", "/v1/orders", buyer.participant_id, 201, None),
        ("POST", "/v1/orders", buyer.participant_id, 422, "price_off_tick"),
        ("DELETE", "/v1/orders/{order_id}", buyer.participant_id, 200, None),
        ("POST", "/v1/orders", None, 401, "bad_signature"),
        ("POST", "/v1/admin/participants", operator_id, 201, None)]
    # the client's id is kept when it is a short token, replaced when not; every answer carries it
    replies = (placed, off_tick, cancelled, forged, issued)
    assert [ln["request_id"] for ln in lines] == [_request_id(r) for r in replies]
    assert lines[0]["request_id"] == "client.req-1"
    assert re.fullmatch(r"[0-9a-f]{16}", lines[2]["request_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", _request_id(listed))
    assert len({ln["request_id"] for ln in lines}) == 5
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ln["ts"]) for ln in lines)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER_NAME)
    secret = issued.json()["api_secret"]
    for never in (buyer.api_secret, ex.operator.api_secret, secret, "5002**********9999", "6217000011117777",
                  "张三", "client_order_id", "log-1"):
        assert never and never not in text, never
    assert SIGNATURE_HEADER.lower() not in text.lower()


async def test_the_file_is_written_by_the_writer_thread_and_stopping_writes_what_is_queued(
        fresh_database_url: Any, tmp_path: Path) -> None:
    dsn = await fresh_database_url()
    logger = logging.getLogger(LOGGER_NAME)
    path = tmp_path / "logs" / "requests.jsonl"
    writer = requestlog.configure(str(path))
    try:
        async with running_exchange(dsn) as ex:
            await ex.list_instrument("LOG-F")
            await asyncio.to_thread(writer.flush)
            first = [msgspec.json.decode(line) for line in path.read_text().splitlines()]
            assert [(ln["method"], ln["route"], ln["status"], ln["code"]) for ln in first] == [
                ("POST", "/v1/instruments", 201, None)]
            assert set(first[0]) == {"ts", "request_id", "method", "route", "participant_id", "status", "code",
                                     "duration_ms"}
            for n in range(50):
                await ex.operator.post("/v1/instruments/LOG-F/halt", headers={"X-Request-Id": f"halt-{n}"})
    finally:
        writer.stop()  # every line still queued is written before the file is closed
    lines = [msgspec.json.decode(line) for line in path.read_text().splitlines()]
    assert [ln["request_id"] for ln in lines[1:]] == [f"halt-{n}" for n in range(50)]
    assert logger.handlers == []  # the lines went to the writer only, not through logging


def test_a_stderr_nobody_reads_never_blocks_the_writer_of_a_line_and_loses_nothing() -> None:
    """`write` only queues: with the pipe full (its reader stalled), queueing 20,000 lines returns at
    once; once the reader reads, every line arrives whole and in order, in blocks of at most PIPE_BUF."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    writer = requestlog.RequestLog(write_fd, owns_fd=True, interval_s=0.01, max_lines=100)
    lines = [msgspec.json.encode({"request_id": f"r-{n}", "pad": "x" * (n % 300)}) for n in range(20_000)]
    for line in lines:
        writer.write(line)  # returns although the pipe (64 KiB) is far smaller than the lines
    received = bytearray()
    stopping = threading.Thread(target=writer.stop)
    stopping.start()  # blocks until the reader has taken everything
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:  # the writer thread has not written more yet
            time.sleep(0.001)
            continue
        if not chunk:  # stop() closed the write end: everything was written
            break
        received += chunk
    stopping.join()
    os.close(read_fd)
    assert bytes(received).split(b"\n") == [*lines, b""]


def test_blocks_to_a_pipe_are_at_most_pipe_buf_and_end_on_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: Any) -> int:
        if fd == write_fd:
            writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    writer = requestlog.RequestLog(write_fd, owns_fd=True, interval_s=60)
    for n in range(200):
        writer.write(b'{"n":%d,"pad":"%s"}' % (n, b"y" * 90))
    writer.stop()
    data = b"".join(iter(lambda: os.read(read_fd, 1 << 16), b""))
    os.close(read_fd)
    assert [len(w) <= select.PIPE_BUF and w.endswith(b"\n") for w in writes] == [True] * len(writes)
    assert len(writes) > 1
    assert [msgspec.json.decode(line)["n"] for line in data.splitlines()] == list(range(200))
