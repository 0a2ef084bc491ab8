"""`hogx serve --demo`: a small market at Rongchang and one participant of each role, so a newcomer can
place an order with curl at once.

Settlement: every demo participant is registered in the core with a masked ID number and a verified
bank account; the farmer is a verified registered poor household and a member (40 %) of the
cooperative; the farmer and the buyer consent to the financier; the buyer has ¥1,000,000 of cash, the
financier ¥5,000,000 of funds to lend and the poverty subsidy fund ¥100,000 (so a demo buy is covered
and a poor farmer's fee can be waived). Deposits carry fixed references, so a restart adds nothing.

Instruments: `RC-LH-WSY` finishing hogs 外三元 and `RC-LH-NSY` finishing hogs 内三元, quoted in fen per kg
live weight (reference ¥28.00 and ¥27.00 a kg), and `RC-PG-WSY` piglets 外三元, quoted in fen per head
(reference ¥821 a head); daily band ±4 %. Participants: a farmer with a lot of 200 finishing hogs,
a cooperative with a lot of finishing hogs and one of piglets, a buyer, a financier and an operator.
A few resting orders give the books a spread.

Seeding is idempotent: instruments and lots are created only when missing, participants are found by
name, and the seed orders carry fixed client order ids (a repeat gets the original answer). The demo
keys are printed on every start, and so are the web app's sign-ins (one person per participant, phone
1380000000N, password `DEMO_PASSWORD`) — this is a local demo, not a way to run a real market.
"""

from __future__ import annotations

import asyncpg

from exchange.commands import (
    Command,
    ConfirmDeposit,
    FundsAccount,
    ListInstrument,
    PlaceOrder,
    RegisterLot,
    SetConsent,
    SetCooperativeMembers,
    VerifyBankAccount,
    VerifyPoorHousehold,
)
from exchange.domain import BreedClass, InstrumentSpec, OrderType, ProductClass, QuarantineRegion, Side, TimeInForce
from exchange.events import Rejected
from exchange.settlement.clearing import SYSTEM_ID
from gateway import participants, store
from gateway import people_store as people_db
from gateway.auth import Role
from gateway.errors import ApiError
from gateway.exchange_port import ExchangePort

__all__ = ["DEMO_INSTRUMENTS", "DEMO_PASSWORD", "DemoParticipant", "demo_phone", "operator", "seed"]

# The web app's demo sign-ins: one person per demo participant, phone 1380000000N (N in the order below)
# and this password, printed on start. A local demo only.
DEMO_PASSWORD = "hogx-demo-2026"

# Chinese quarantine certificates (checked at lot registration and matched at the weigh-in); unfasted
# finishing hogs lose 2 % of their live weight.
DEMO_INSTRUMENTS = (
    InstrumentSpec("RC-LH-WSY", ProductClass.FINISHING_HOG, BreedClass.WAI_SAN_YUAN, "Rongchang, Chongqing",
                   100_000, 120_000, 90_000, 140_000, 10, 1, 500, 400, 2800,
                   quarantine_region=QuarantineRegion.CN, shrink_bps=200),
    InstrumentSpec("RC-LH-NSY", ProductClass.FINISHING_HOG, BreedClass.NEI_SAN_YUAN, "Rongchang, Chongqing",
                   100_000, 120_000, 90_000, 140_000, 10, 1, 500, 400, 2700,
                   quarantine_region=QuarantineRegion.CN, shrink_bps=200),
    InstrumentSpec("RC-PG-WSY", ProductClass.PIGLET, BreedClass.WAI_SAN_YUAN, "Rongchang, Chongqing",
                   15_000, 30_000, 10_000, 35_000, 100, 1, 1000, 400, 82_100, quarantine_region=QuarantineRegion.CN),
)

_PARTICIPANTS = (
    (Role.OPERATOR, "demo operator (Rongchang market)"),
    (Role.FARMER, "demo farmer 李德明 (荣昌区安富街道)"),
    (Role.COOPERATIVE, "demo cooperative 荣昌生猪养殖专业合作社"),
    (Role.BUYER, "demo buyer 重庆肉联厂"),
    (Role.FINANCIER, "demo financier 荣昌农商行"),
)


class DemoParticipant:
    __slots__ = ("api_key", "api_secret", "participant_id", "role")

    def __init__(self, role: Role, participant_id: int, api_key: str, api_secret: str) -> None:
        self.role, self.participant_id, self.api_key, self.api_secret = role, participant_id, api_key, api_secret


async def _participant(pool: asyncpg.Pool, role: Role, name: str) -> DemoParticipant:
    row = await pool.fetchrow(
        "SELECT p.participant_id, k.api_key, k.secret FROM participants p JOIN api_keys k USING (participant_id)"
        " WHERE p.name = $1 AND p.role = $2 AND NOT k.revoked ORDER BY k.created_at LIMIT 1", name, role.value)
    if row is not None:
        return DemoParticipant(role, row["participant_id"], row["api_key"], row["secret"])
    issued = await store.register_participant(pool, role, name)
    return DemoParticipant(role, issued.participant_id, issued.api_key, issued.api_secret)


async def operator(pool: asyncpg.Pool) -> DemoParticipant:
    """The demo market's operator and its key (created if missing): what `hogx serve --demo --simulate` uses."""
    return await _participant(pool, *_PARTICIPANTS[0])


def demo_phone(index: int) -> str:
    return f"1380000000{index}"


async def _web_people(pool: asyncpg.Pool, people: list[DemoParticipant]) -> None:
    salt, password_hash = await people_db.hash_password(DEMO_PASSWORD)
    for index, (p, (_, name)) in enumerate(zip(people, _PARTICIPANTS, strict=True)):
        await people_db.ensure_person(pool, p.participant_id, demo_phone(index), name, salt, password_hash)


def _bank_account(p: DemoParticipant) -> str:
    return f"62170000{p.participant_id:08d}"


async def _system(port: ExchangePort, command: Command) -> None:
    result = await port.submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            print(f"demo settlement step {type(command).__name__} refused: {event.reason.name.lower()}")


async def _settlement(port: ExchangePort, people: list[DemoParticipant]) -> None:
    """Profiles, verified bank accounts, the poor household, the cooperative, consents and money."""
    _operator, farmer, coop, buyer, financier = people
    clearing = port.sequencer.core.clearing
    if clearing is None:
        return
    for p, name in zip(people, (name for _, name in _PARTICIPANTS), strict=True):
        if p.participant_id not in clearing.participants:
            profile = participants.Profile(role=p.role, name=name, id_number_masked="5002**********0000",
                                           bank_account=_bank_account(p))
            await participants.register(port, SYSTEM_ID, p.participant_id, profile)
        who = clearing.participants[p.participant_id]
        if who.bank_account and not who.bank_verified:
            await _system(port, VerifyBankAccount(SYSTEM_ID, 0, p.participant_id, who.bank_account))
    if not clearing.participants[farmer.participant_id].poor_verified:
        await _system(port, VerifyPoorHousehold(SYSTEM_ID, 0, farmer.participant_id, "500226-2016-0001"))
    if not clearing.participants[coop.participant_id].member_ids:
        await _system(port, SetCooperativeMembers(SYSTEM_ID, 0, coop.participant_id, (farmer.participant_id,),
                                                  (4000,)))
    for borrower in (farmer, buyer):
        if not clearing.has_consented(borrower.participant_id, financier.participant_id):
            await _system(port, SetConsent(borrower.participant_id, 0, financier.participant_id))
    for ref, owner, account, amount_fen in (
        ("demo-buyer-cash-1", buyer.participant_id, FundsAccount.TRADING_CASH, 100_000_000),
        ("demo-financier-funds-1", financier.participant_id, FundsAccount.FINANCIER_FUNDS, 500_000_000),
        ("demo-subsidy-fund-1", 0, FundsAccount.POVERTY_SUBSIDY_FUND, 10_000_000),
    ):
        await _system(port, ConfirmDeposit(SYSTEM_ID, 0, ref, owner, account, amount_fen))


async def _lot(port: ExchangePort, seller: DemoParticipant, instrument: str, heads: int, avg_weight_g: int,
               cert: str) -> int:
    """The seller's lot on `instrument`, registered when it has none."""
    for rec in port.read_model.list_lots(seller.participant_id):
        if rec.lot.instrument == instrument:
            return rec.lot.lot_id
    command = RegisterLot(seller.participant_id, 0, instrument, heads, avg_weight_g, "荣昌区, 重庆", cert,
                          f"ear tags {seller.participant_id:03d}-00001..{seller.participant_id:03d}-{heads:05d}")
    await port.submit(command)
    return port.read_model.list_lots(seller.participant_id)[-1].lot.lot_id


async def _order(port: ExchangePort, who: DemoParticipant, cid: str, instrument: str, side: Side, price_fen: int,
                 heads: int, lot_id: int = 0) -> None:
    command = PlaceOrder(who.participant_id, 0, cid, instrument, side, OrderType.LIMIT, price_fen, heads,
                         TimeInForce.GTC, lot_id=lot_id)
    try:
        await port.submit(command)
    except ApiError as exc:  # e.g. the demo database's instrument was halted since: the demo still starts
        print(f"demo order {cid} not placed: {exc.code}")


async def seed(pool: asyncpg.Pool, port: ExchangePort) -> list[DemoParticipant]:
    """Create what is missing of the demo market and print the participants' keys."""
    people = [await _participant(pool, role, name) for role, name in _PARTICIPANTS]
    operator, farmer, coop, buyer, _financier = people
    await _settlement(port, people)
    await _web_people(pool, people)
    for spec in DEMO_INSTRUMENTS:
        if spec.symbol not in port.read_model.instruments:
            await port.submit(ListInstrument(operator.participant_id, 0, spec))
    farm_lot = await _lot(port, farmer, "RC-LH-WSY", 200, 112_000, "5001530001")
    coop_lot = await _lot(port, coop, "RC-LH-WSY", 500, 108_000, "5001530002")
    piglet_lot = await _lot(port, coop, "RC-PG-WSY", 300, 22_000, "5001530003")
    await _order(port, farmer, "demo-farmer-1", "RC-LH-WSY", Side.SELL, 2810, 30, farm_lot)
    await _order(port, coop, "demo-coop-1", "RC-LH-WSY", Side.SELL, 2830, 50, coop_lot)
    await _order(port, coop, "demo-coop-2", "RC-PG-WSY", Side.SELL, 82_500, 100, piglet_lot)
    await _order(port, buyer, "demo-buyer-1", "RC-LH-WSY", Side.BUY, 2780, 20)
    await _order(port, buyer, "demo-buyer-2", "RC-PG-WSY", Side.BUY, 81_800, 40)
    _print(people, {farmer.participant_id: farm_lot, coop.participant_id: coop_lot})
    return people


def _print(people: list[DemoParticipant], lots: dict[int, int]) -> None:
    lines = ["", "hogx demo market at Rongchang: RC-LH-WSY (finishing hogs 外三元, fen/kg), "
                 "RC-LH-NSY (finishing hogs 内三元, fen/kg), RC-PG-WSY (piglets 外三元, fen/head)",
             "demo participants (local demo keys; use them with `hogx sign`, see README):"]
    for p in people:
        lot = f"  lot_id={lots[p.participant_id]}" if p.participant_id in lots else ""
        lines.append(f"  {p.role.value:<12} participant_id={p.participant_id:<4} "
                     f"HOGX_KEY={p.api_key} HOGX_SECRET={p.api_secret}{lot}")
    lines.append(f"web app sign-ins (open the server's address in a browser), password {DEMO_PASSWORD}:")
    lines.extend(f"  {p.role.value:<12} phone {demo_phone(i)}" for i, p in enumerate(people))
    print("\n".join(lines) + "\n", flush=True)
