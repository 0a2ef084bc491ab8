"""Reports and financing views over HTTP (issue 11, items 6 to 10), against a real server, sequencer
and PostgreSQL: the financing policy is readable, a lender keeps sight of what it financed, collected
interest is the financier's income, and past settlement reports never change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from gateway.auth import Role
from gateway.client import Reply
from gateway.testing import Exchange, running_exchange


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: Any) -> AsyncIterator[Exchange]:
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


def _ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, (reply.status, reply.body)
    return reply.json()


async def test_the_financing_policy_can_be_read_by_participants_and_set_by_operators(ex: Exchange) -> None:
    financier = await ex.register(Role.FINANCIER, "荣昌农商行")
    farmer = await ex.register(Role.FARMER, "李四")
    assert _ok(await financier.get("/v1/admin/financing-policy")) == {"advance_max_bps": 7000}  # the default
    _ok(await ex.operator.post("/v1/admin/financing-policy", json={"advance_max_bps": 6500}))
    for reader in (ex.operator, financier, farmer):
        assert _ok(await reader.get("/v1/admin/financing-policy")) == {"advance_max_bps": 6500}
    refused = await financier.post("/v1/admin/financing-policy", json={"advance_max_bps": 9000})
    assert (refused.status, refused.json()["code"]) == (403, "forbidden")
    assert _ok(await farmer.get("/v1/admin/financing-policy")) == {"advance_max_bps": 6500}
    paths = _ok(await ex.client().get("/v1/openapi.json"))["paths"]
    assert set(paths["/v1/admin/financing-policy"]) == {"get", "post"}
