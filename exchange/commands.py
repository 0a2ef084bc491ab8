"""Commands: the only way anything changes in the exchange.

Every command is an immutable msgspec struct in one tagged union, ``Command``. The gateway builds
them, the sequencer stamps ``ts_ns`` (``stamp``), journals them in order, and ``Core.apply`` turns
each into events. They are encoded array-like into the journal; add new fields only at the end and
only with defaults, so old journals still decode and replay.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Union

import msgspec

from exchange.domain import InstrumentSpec, OrderType, SelfTradePrevention, Side, TimeInForce


class _Command(msgspec.Struct, frozen=True, tag=True, array_like=True, gc=False):
    participant_id: int  # who sent it; operator commands carry the operator's id
    ts_ns: int  # exchange time stamped by the sequencer; the core never reads a clock


class ListInstrument(_Command, frozen=True):
    spec: InstrumentSpec


class RegisterLot(_Command, frozen=True):
    """A seller's lot of pigs. The seller is ``participant_id``; the core assigns the lot id.

    ``client_lot_ref`` (optional, at most 36 characters) makes it idempotent: unique per seller forever,
    a retry with the same content gets the original lot back, one with other content is rejected."""

    instrument: str
    heads: int
    avg_weight_g: int
    origin: str
    quarantine_cert: str
    ear_tags: str = ""
    client_lot_ref: str = ""


class PlaceOrder(_Command, frozen=True):
    """``price_fen`` is ignored for market orders; ``lot_id`` is required on sells, 0 on buys."""

    client_order_id: str
    instrument: str
    side: Side
    order_type: OrderType
    price_fen: int
    quantity_heads: int
    time_in_force: TimeInForce = TimeInForce.GTC
    expire_at_ns: int = 0
    post_only: bool = False
    min_quantity_heads: int = 0
    all_or_none: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.EXPIRE_TAKER
    lot_id: int = 0


class CancelOrder(_Command, frozen=True):
    order_id: int


class AmendOrder(_Command, frozen=True):
    """New limit price and new total quantity (filled + remaining); 0 leaves either unchanged."""

    order_id: int
    price_fen: int = 0
    quantity_heads: int = 0


class Halt(_Command, frozen=True):
    instrument: str
    reason: str = ""  # shown with the halted state (at most 200 characters)


class Resume(_Command, frozen=True):
    instrument: str


class StartAuction(_Command, frozen=True):
    instrument: str


class Uncross(_Command, frozen=True):
    instrument: str


class SetReferencePrice(_Command, frozen=True):
    instrument: str
    price_fen: int


class ClockTick(_Command, frozen=True):
    """Moves exchange time: GTD orders whose expiry has passed expire, trades whose dispute window closed
    settle, and what became final more than ``retention_ns`` ago is forgotten from memory (the core's
    "Memory" docstring): 0 means the default window, ``exchange.core.DEFAULT_RETENTION_NS`` (24 h). It
    travels in the journal with the tick, so a replay forgets exactly what the live core forgot."""

    retention_ns: int = 0


class SetNonTradingDay(_Command, frozen=True):
    """Operator: ``day`` (yyyymmdd, China Standard Time, after today) is a non-trading day for every
    instrument with a trading session (``closed``), or a trading day again (``closed=False``)."""

    day: int
    closed: bool = True


# -- settlement (exchange/settlement/clearing.py) ---------------------------------------------------------
# ``participant_id`` is always the sender. "Operator" commands are also accepted from participant 0 (the
# system), which registers the first operator.


class ParticipantRole(IntEnum):
    FARMER = 1
    COOPERATIVE = 2
    BUYER = 3
    FINANCIER = 4
    OPERATOR = 5


class FundsAccount(IntEnum):
    """Which cash account a deposit or withdrawal moves."""

    TRADING_CASH = 1  # the participant's cash for bids (ledger BUYER_CASH)
    FINANCIER_FUNDS = 2  # a financier's money to lend
    POVERTY_SUBSIDY_FUND = 3  # the exchange's subsidy fund (owner 0; operators deposit sponsors' money)


class RegisterParticipant(_Command, frozen=True):
    """Operator: a participant's settlement profile. ``subject_id`` is the id the gateway assigned (from
    the ``participants`` table's identity, so that ids never collide with those the database assigns).

    ``id_number_masked`` must be masked (contain ``*``): the exchange never stores a full ID number.
    A bank account given here still needs ``VerifyBankAccount``; a poor-household registration
    number still needs ``VerifyPoorHousehold``.
    """

    subject_id: int
    role: ParticipantRole
    name: str
    id_number_masked: str
    bank_account: str = ""
    poor_registration_no: str = ""
    bank_code: str = ""  # the account's bank (3 digits, CNAPS 行别代码) ...
    branch_code: str = ""  # ... and branch (12 digits, CNAPS 联行号, starting with the bank code)
    # A registration through the API (gateway.admin): its idempotency reference and the first API key
    # (the gateway writes the key's row in the batch's transaction, gateway.store.RegistrationWriter). A
    # repeat of the reference with the same profile answers the registration it made; with another, it
    # is refused (DUPLICATE_REFERENCE). The secret is in the journal, as it is in the api_keys table:
    # HMAC needs the secret itself.
    registration_ref: str = ""
    api_key: str = ""
    api_secret: str = ""


class UpdateParticipant(_Command, frozen=True):
    """Operator or the participant itself: new name and bank account (a changed account or name leaves the
    account unverified: the bank checks the account against its holder's name)."""

    subject_id: int
    name: str
    bank_account: str
    bank_code: str = ""  # as in RegisterParticipant; a change is a change of account
    branch_code: str = ""


class VerifyBankAccount(_Command, frozen=True):
    """Operator: the participant's current bank account (must match) is verified."""

    subject_id: int
    bank_account: str


class VerifyPoorHousehold(_Command, frozen=True):
    """Operator: verify (or with ``verified=False`` revoke) a registered poor household (建档立卡)."""

    subject_id: int
    registration_no: str
    verified: bool = True


class SetCooperativeMembers(_Command, frozen=True):
    """Operator: a cooperative's member farmers and their shares of its net proceeds, in basis points.

    Shares are positive and sum to at most 10,000; the cooperative keeps the rest (and the odd fen).
    """

    cooperative_id: int
    member_ids: tuple[int, ...]
    shares_bps: tuple[int, ...]


class SetConsent(_Command, frozen=True):
    """A participant lets a financier finance it and see its exposures (or withdraws that consent)."""

    financier_id: int
    granted: bool = True


class ConfirmDeposit(_Command, frozen=True):
    """Operator (or the bank import): money arrived at the bank. ``deposit_ref`` (the bank's reference)
    makes it idempotent; a subsidy-fund deposit has ``owner_id`` 0."""

    deposit_ref: str
    owner_id: int
    account: FundsAccount
    amount_fen: int


class RequestWithdrawal(_Command, frozen=True):
    """The owner asks for money back to its verified bank account; held until confirmed."""

    withdrawal_ref: str
    account: FundsAccount
    amount_fen: int


class ConfirmWithdrawal(_Command, frozen=True):
    """Operator (or the bank import): the withdrawal was paid (``ok``) or failed (money returns)."""

    owner_id: int
    withdrawal_ref: str
    ok: bool
    bank_ref: str = ""


class RecordWeighIn(_Command, frozen=True):
    """Seller or operator: what was delivered against a trade; opens the dispute window.

    ``total_weight_g`` is the live weight of the ``heads_delivered``; ``heads_refused`` arrived dead or
    were refused at the scale (paid nothing, their hold returned; absent: 0, the old meaning: every head
    not delivered is simply short). ``unfasted``: the pigs were not fasted before the scale, so the
    instrument's ``shrink_bps`` comes off their live weight (absent: False, no shrink). The
    certificate must be the lot's on an instrument whose ``quarantine_region`` checks it."""

    trade_id: int
    heads_delivered: int
    total_weight_g: int
    quarantine_cert: str
    quarantine_checked: bool
    heads_refused: int = 0
    unfasted: bool = False


class OpenDispute(_Command, frozen=True):
    """Buyer or seller, before the dispute window closes: the trade waits for an operator. A seller's
    dispute (the scale under-read) holds what a raise may cost the buyer (clearing, flow 4)."""

    trade_id: int
    reason: str


class ResolveDispute(_Command, frozen=True):
    """Operator: the disputed trade settles at ``amount_fen``: 0 .. the weigh-in amount, plus, for a
    seller's dispute, what was held from the buyer when it opened (``rules.dispute_raise_limit_fen``)."""

    trade_id: int
    amount_fen: int


class RejectDelivery(_Command, frozen=True):
    """Buyer, within the window, of a delivery outside the instrument's tolerance: full refund."""

    trade_id: int


class GrantCreditLine(_Command, frozen=True):
    """Financier: earmark ``amount_fen`` more of its funds for a consenting buyer's bids, at a rate."""

    buyer_id: int
    amount_fen: int
    rate_bps: int  # yearly interest, basis points


class ReduceCreditLine(_Command, frozen=True):
    """Financier: return undrawn credit to its funds."""

    buyer_id: int
    amount_fen: int


class GrantAdvance(_Command, frozen=True):
    """Financier: advance a consenting seller part of a matched trade's estimated value."""

    trade_id: int
    amount_fen: int
    rate_bps: int  # yearly interest, basis points


class RepayLoan(_Command, frozen=True):
    """A borrower repays a financier (interest first) from its cash (buyers) or payable (farmers).

    ``repayment_ref`` (optional) makes it idempotent: unique per borrower, a retry with the same content
    changes nothing and answers like the original, one with other content is rejected."""

    financier_id: int
    amount_fen: int
    repayment_ref: str = ""


class WriteOffLoan(_Command, frozen=True):
    """Financier: give up what a borrower still owes on one of its loans (principal and interest
    accrued through today). The loan stops accruing; nothing is paid to anyone."""

    loan_id: int
    reason: str


class RunPayouts(_Command, frozen=True):
    """Operator: one payout instruction per payee with money payable, poor households first."""

    run_ref: str
    poor_only: bool = False


class MarkPayoutsSent(_Command, frozen=True):
    """Operator: these (payout_id, attempt) went to the bank in file ``file_ref``, whose bytes (stored
    outside the core) have the SHA-256 ``sha256`` (hex; empty in journals written before files were stored)."""

    file_ref: str
    payouts: tuple[tuple[int, int], ...]
    sha256: str = ""


class BankConfirmation(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One row of the bank's confirmation file."""

    payout_id: int
    attempt: int
    ok: bool
    bank_ref: str
    reason: str = ""


class ImportBankConfirmations(_Command, frozen=True):
    """Operator: the bank's answers for sent payouts; ``file_ref`` makes the import idempotent.

    ``whole_file`` (the gateway always sets it): a file with any row the clearing cannot apply is refused
    whole (``Clearing.confirmation_problems``): nothing applied, ``file_ref`` not used. Without it (journals
    written before it existed) the good rows are applied and the others listed as errors."""

    file_ref: str
    rows: tuple[BankConfirmation, ...]
    whole_file: bool = False


class RetryPayout(_Command, frozen=True):
    """Operator: send a failed payout again (to the payee's current verified account)."""

    payout_id: int


class ReturnPayout(_Command, frozen=True):
    """Operator: give a failed payout up; its money returns to the payee's payable."""

    payout_id: int


class SetFeeSchedule(_Command, frozen=True):
    """Operator: the seller fee of an instrument, in basis points of the final amount."""

    instrument: str
    seller_fee_bps: int


class SetFinancingPolicy(_Command, frozen=True):
    """Operator: an advance may be at most this share of the trade's estimated value."""

    advance_max_bps: int


# -- lot auctions (exchange/matching/lot_auction.py) ----------------------------------------------------------
# Prices are fen per kg of live weight for finishing hogs and fen per head for piglets, as the instrument
# quotes; times are exchange time in ns. An operator may send any of them on behalf of the seller.


class OfferLotAuction(_Command, frozen=True):
    """A seller (or an operator for ``seller_id``) puts a registered lot's available heads up for auction.

    ``increments`` is the bid-increment table: (from price, increment) rows, the first from 0, prices
    ascending; the increment at a price is that of the last row at or below it. ``reserve_price_fen``
    is hidden (at least the start price); ``buy_now_price_fen`` 0 for none. A bid in the last
    ``extension_ns`` before the close moves the close to the bid's time + ``extension_ns`` (0: never).
    Lots of one ``catalogue`` close together. ``negotiation_ns``: the passed-in lot's negotiation window."""

    lot_id: int
    start_price_fen: int
    reserve_price_fen: int
    increments: tuple[tuple[int, int], ...]
    opens_at_ns: int
    closes_at_ns: int
    buy_now_price_fen: int = 0
    extension_ns: int = 0
    negotiation_ns: int = 3_600_000_000_000
    catalogue: str = ""
    seller_id: int = 0  # an operator's offer names the seller; 0 (or the sender) for a seller's own


class BidLotAuction(_Command, frozen=True):
    """A bid: the bidder's maximum. The proxy bids for it by the increment, never above the maximum.
    ``client_ref`` (optional, at most 36 characters) makes it idempotent (matching/lot_auction.py)."""

    auction_id: int
    max_price_fen: int
    client_ref: str = ""


class BuyNowLotAuction(_Command, frozen=True):
    auction_id: int


class WithdrawLotAuction(_Command, frozen=True):
    """The seller (or an operator) withdraws a lot that has no bid yet."""

    auction_id: int


class NegotiateLotAuction(_Command, frozen=True):
    """Seller (or operator) and top bidder of a passed-in lot: an offer at ``price_fen`` (a counter-offer
    replaces the last), or ``accept`` the other side's last offer (``price_fen`` 0 or that price);
    ``client_ref`` as for a bid."""

    auction_id: int
    price_fen: int = 0
    accept: bool = False
    client_ref: str = ""


Command = Union[  # noqa: UP007 - msgspec needs a real Union object to build a tagged decoder
    ListInstrument,
    RegisterLot,
    PlaceOrder,
    CancelOrder,
    AmendOrder,
    Halt,
    Resume,
    StartAuction,
    Uncross,
    SetReferencePrice,
    ClockTick,
    RegisterParticipant,
    UpdateParticipant,
    VerifyBankAccount,
    VerifyPoorHousehold,
    SetCooperativeMembers,
    SetConsent,
    ConfirmDeposit,
    RequestWithdrawal,
    ConfirmWithdrawal,
    RecordWeighIn,
    OpenDispute,
    ResolveDispute,
    RejectDelivery,
    GrantCreditLine,
    ReduceCreditLine,
    GrantAdvance,
    RepayLoan,
    WriteOffLoan,
    RunPayouts,
    MarkPayoutsSent,
    ImportBankConfirmations,
    RetryPayout,
    ReturnPayout,
    SetFeeSchedule,
    SetFinancingPolicy,
    OfferLotAuction,
    BidLotAuction,
    BuyNowLotAuction,
    WithdrawLotAuction,
    NegotiateLotAuction,
    SetNonTradingDay,
]

COMMAND_TYPES: tuple[type, ...] = Command.__args__  # type: ignore[attr-defined]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Command)


def encode_command(command: Command) -> bytes:
    return _encoder.encode(command)


def decode_command(data: bytes) -> Command:
    return _decoder.decode(data)


def stamp(command: Command, ts_ns: int) -> Command:
    """The same command carrying the sequencer's time."""
    return msgspec.structs.replace(command, ts_ns=ts_ns)
