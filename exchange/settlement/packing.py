"""The packed forms of a clearing snapshot's payouts and final queue (``ClearingSnapshot.packed_payouts``,
``ClearingSnapshot.packed_final``): lossless rows of ints that take about half the bytes of the records
listed whole, since the night's payouts and their queue entries stay held a window after they are final.
The clearing (clearing.py) packs what it did not restore listed and unpacks on restore.
"""

from __future__ import annotations

from typing import Any, Final

from msgspec.structs import astuple

from exchange.events import PayoutPriority, PayoutState
from exchange.settlement.model import PayableSource, Payout, SourceKind
from exchange.settlement.state import ClearingState

# A packed payout (ClearingSnapshot.packed_payouts) is one row of ints and strings, lossless. Ids, payee,
# transfer, times and source refs are differences from the payout (or source) packed before it: a run's
# payouts follow one another, made, sent and answered together, and their sources are a few days' trades,
# so most take a byte or two where the whole value takes 5 to 9. Priority, state and attempt are one int;
# the bank account and codes are 0 when they are the payee's own at the snapshot (restored from the
# participant); the file ref an index into the snapshot's list of them; the sources flat: ref step * 4 +
# kind, then the amount, the last amount left out when they add up to the payout's. About half the bytes
# of a listed Payout: what the night's payouts, held a window after they are final, cost.
_KIND_BITS: Final = 2
_STATE_BITS: Final = 3
if max(SourceKind) >= 1 << _KIND_BITS or max(PayoutPriority) >= 1 << _KIND_BITS or max(
        PayoutState) >= 1 << _STATE_BITS:
    raise ImportError("a source kind, payout priority or state does not fit the packed payouts' bits")
# The members by value, for unpacking: calling an IntEnum class with a value costs about 1 µs (its
# metaclass's __call__), a lookup here a few dozen ns. A restore unpacks the night's payouts, some 380
# with 5 sources each (benchmarks.longrun): ~2,300 calls, 1-1.5 ms of each recovery.
_SOURCE_KINDS: Final = {int(k): k for k in SourceKind}
_PRIORITIES: Final = {int(k): k for k in PayoutPriority}
_STATES: Final = {int(k): k for k in PayoutState}


def pack_payouts(cl: ClearingState, listed: list[Payout]) -> list[Any]:
    """[file refs, rows] of these payouts (sorted by id), or [] for none."""
    # Compiled, a generic attribute of a struct costs ~170 instructions, int() of an IntEnum ~440 and an
    # arithmetic on an untyped value ~100: the fields are unpacked from astuple (one call) into locals typed
    # int or str (unboxed, an IntEnum member to its plain int: the same ints as int() gave), the sources
    # likewise; astuple and the clearing's dicts held in locals (a global is a dict lookup a use). About 16k
    # instructions a payout before, 7k after (callgrind, a LongMarket day's 378 payouts); the same rows.
    if not listed:
        return []
    files: dict[str, int] = {}
    rows: list[list[Any]] = []
    participants = cl.participants
    bank_codes = cl.bank_codes
    payout_id: int
    run_id: Any  # only copied: an int local would unbox it and box it again
    payee_id: int
    amount: int
    priority: int
    pending_id: int
    account: str
    sources: list[PayableSource]
    created: int
    state: int
    attempt: int
    file_ref: str
    bank_ref: str
    reason: str
    updated: int
    bank_code: str
    branch_code: str
    kind: int
    ref_id: int
    source_amount: int
    prev_id = prev_payee = prev_pending = prev_created = prev_updated = prev_ref = 0
    fields = astuple
    for p in listed:
        (payout_id, run_id, payee_id, amount, priority, pending_id, account, sources, created, state, attempt,
         file_ref, bank_ref, reason, updated, bank_code, branch_code) = fields(p)  # fmt: skip
        who = participants.get(payee_id)
        own = False
        if who is not None and account == who.bank_account:
            codes = bank_codes.get(payee_id)
            if codes is None:
                own = bank_code == "" and branch_code == ""
            else:
                own = bank_code == codes[0] and branch_code == codes[1]
        flat: list[int] = []
        total = 0
        for source in sources:
            kind, ref_id, source_amount = fields(source)
            flat.append(((ref_id - prev_ref) << _KIND_BITS) | kind)
            flat.append(source_amount)
            prev_ref = ref_id
            total += source_amount
        if flat and total == amount:
            flat.pop()
        rows.append([payout_id - prev_id, run_id, payee_id - prev_payee, amount,
                     (((attempt << _STATE_BITS) | state) << _KIND_BITS) | priority,
                     pending_id - prev_pending, 0 if own else [account, bank_code, branch_code], flat,
                     created - prev_created, updated - prev_updated, files.setdefault(file_ref, len(files)),
                     bank_ref, reason])  # fmt: skip
        prev_id, prev_payee, prev_pending = payout_id, payee_id, pending_id
        prev_created, prev_updated = created, updated
    return [list(files), rows]


def pack_final(entries: list[tuple[Any, int, Any]]) -> list[Any]:
    """The final queue's entries flat: the time as the step from the entry before (a command's or a tick's
    records share one: a byte, where a time takes 9), the kind, the key; 5 bytes an entry where a listed
    (time, kind, key) takes 14."""
    flat: list[Any] = []
    prev = 0
    for at, kind, key in entries:
        flat.append(at - prev)
        flat.append(kind)
        flat.append(key)
        prev = at
    return flat


def unpack_final(flat: list[Any]) -> list[tuple[Any, int, Any]]:
    """The entries pack_final packed (an (owner, reference) key back as a tuple)."""
    entries: list[tuple[Any, int, Any]] = []
    at = 0
    for i in range(0, len(flat), 3):
        at += flat[i]
        key = flat[i + 2]
        entries.append((at, flat[i + 1], tuple(key) if isinstance(key, list) else key))
    return entries


def unpack_payouts(cl: ClearingState, packed: list[Any]) -> list[Payout]:
    """The payouts pack_payouts packed (the participants and bank codes restored first)."""
    # The row's fields into typed locals and the module's tables and classes into locals, as pack_payouts
    # does and for the same reason: an untyped field made every addition and index a generic call (and a
    # boxed index), every global a dict lookup.
    if not packed:
        return []
    files: list[str] = packed[0]
    rows: list[list[Any]] = packed[1]
    participants = cl.participants
    bank_codes = cl.bank_codes
    source_kinds = _SOURCE_KINDS
    priorities = _PRIORITIES
    states = _STATES
    make_source = PayableSource
    make_payout = Payout
    payouts: list[Payout] = []
    payout_id = payee_id = pending_id = created = updated = ref = 0
    kind_mask = (1 << _KIND_BITS) - 1
    state_mask = (1 << _STATE_BITS) - 1
    d_id: int
    run_id: Any  # only copied
    d_payee: int
    amount: int
    flags: int
    d_pending: int
    bank: Any
    flat: list[int]
    d_created: int
    d_updated: int
    file_index: int
    bank_ref: str
    reason: str
    account: str
    bank_code: str
    branch_code: str
    for (d_id, run_id, d_payee, amount, flags, d_pending, bank, flat, d_created, d_updated, file_index, bank_ref,
         reason) in rows:  # fmt: skip
        payout_id += d_id
        payee_id += d_payee
        pending_id += d_pending
        created += d_created
        updated += d_updated
        if bank == 0:
            account = participants[payee_id].bank_account
            bank_code, branch_code = bank_codes.get(payee_id, ("", ""))
        else:
            account, bank_code, branch_code = bank
        sources: list[PayableSource] = []
        rest = amount
        n = len(flat)
        for i in range(0, n, 2):
            head = flat[i]
            ref += head >> _KIND_BITS
            source_amount = flat[i + 1] if i + 1 < n else rest
            rest -= source_amount
            sources.append(make_source(source_kinds[head & kind_mask], ref, source_amount))
        state_and_attempt = flags >> _KIND_BITS
        payouts.append(make_payout(payout_id, run_id, payee_id, amount, priorities[flags & kind_mask], pending_id,
                                   account, sources, created, states[state_and_attempt & state_mask],
                                   state_and_attempt >> _STATE_BITS, files[file_index], bank_ref, reason, updated,
                                   bank_code, branch_code))  # fmt: skip
    return payouts
