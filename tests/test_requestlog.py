"""The request log (`gateway.requestlog`): one JSON line per state-changing request, carrying the request
id the response also carries, the participant, the route template and the result code, and nothing secret;
read back from the real server's log records."""

from __future__ import annotations

import asyncio
import logging
import re
from logging.handlers import QueueHandler
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
        # the event loop only queues a line: no handler of the logger writes to a file or a stream itself
        assert [type(h) for h in logger.handlers] == [QueueHandler]
        async with running_exchange(dsn) as ex:
            await ex.list_instrument("LOG-F")
            await asyncio.to_thread(writer.flush)
            first = [msgspec.json.decode(line) for line in path.read_text().splitlines()]
            assert [(ln["method"], ln["route"], ln["status"]) for ln in first] == [
                ("POST", "/v1/instruments", 201)]
            for n in range(50):
                await ex.operator.post("/v1/instruments/LOG-F/halt", headers={"X-Request-Id": f"halt-{n}"})
    finally:
        writer.stop()  # every line still queued is written before the file is closed
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    lines = [msgspec.json.decode(line) for line in path.read_text().splitlines()]
    assert [ln["request_id"] for ln in lines[1:]] == [f"halt-{n}" for n in range(50)]
    assert logger.handlers == []
