"""`client_lot_ref` over real HTTP: a seller that retries `POST /v1/lots` (a 503 means "status unknown")
gets its original lot back, with the same status, and no second lot; other content under the same ref
is a 409."""

from __future__ import annotations

from gateway.auth import Role
from gateway.testing import Exchange


async def test_posting_the_same_lot_twice_registers_one_lot(ex: Exchange) -> None:
    await ex.list_instrument("T-LOTREF-1")
    farmer = await ex.register(Role.FARMER)
    body = {"instrument": "T-LOTREF-1", "heads": 40, "avg_weight_g": 110_000, "origin": "荣昌区, 重庆",
            "quarantine_cert": "渝动检 5001530001", "client_lot_ref": "farm-7/lot-2026-03"}
    first = await farmer.post("/v1/lots", json=body)
    again = await farmer.post("/v1/lots", json=body)
    assert (first.status, again.status) == (201, 201)
    assert again.json() == first.json()
    assert (first.json()["heads"], first.json()["available_heads"]) == (40, 40)
    listed = (await farmer.get("/v1/lots")).json()
    assert [lot["lot_id"] for lot in listed] == [first.json()["lot_id"]]

    conflict = await farmer.post("/v1/lots", json={**body, "heads": 41})
    assert (conflict.status, conflict.json()["code"]) == (409, "duplicate_reference")
    too_long = await farmer.post("/v1/lots", json={**body, "client_lot_ref": "x" * 37})
    assert too_long.status == 422
    assert len((await farmer.get("/v1/lots")).json()) == 1


async def test_openapi_shows_the_idempotency_refs(ex: Exchange) -> None:
    spec = (await ex.client().get("/v1/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert "client_lot_ref" in schemas["RegisterLotRequest"]["properties"]
    assert "repayment_ref" in schemas["RepaymentRequest"]["properties"]
