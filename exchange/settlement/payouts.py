"""Payouts (flow 6 of clearing.py's docstring): payout runs over the payables, bank files marked sent,
bank confirmations imported (applied, duplicate or refused), retries and returns.

Functions of the clearing's state (state.py), the handlers ``Clearing`` (clearing.py) gives the core.
"""

import hashlib
from collections.abc import Sequence

import msgspec

from exchange.commands import (
    BankConfirmation,
    ImportBankConfirmations,
    MarkPayoutsSent,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
)
from exchange.events import (
    BankImportApplied,
    PayoutChanged,
    PayoutRunCreated,
    PayoutState,
)
from exchange.settlement.ledger import (
    MAX_INT64,
    Transfer,
)
from exchange.settlement.model import (
    BankImport,
    FinalKind,
    Participant,
    Payout,
    PayoutRun,
    SentFile,
    payout_trade_ids,
)
from exchange.settlement.state import (
    _BANK,
    _ENCODER,
    _FINAL_PAYOUT,
    _NORMAL,
    _P_CONFIRMED,
    _P_FAILED,
    _P_PENDING,
    _P_SENT,
    _PAYOUT,
    _PAYOUT_CHANGED,
    _PENDING,
    _POST,
    _SAME_DAY,
    _TC_PAYOUT,
    _TRANSFER,
    _VOID,
    _ZERO,
    MAX_REF_LEN,
    TC,
    Boxed,
    ClearingState,
    R,
    _astuple,
)


def payout_event(cl: ClearingState, p: Payout, ts_ns: Boxed) -> PayoutChanged:
    # A payout's sources never change once it is made, so its trade ids are worked out once (a
    # derived lookup, not state: rebuilt empty on restore). The payout is read as one tuple (positions
    # checked at import): (payout_id, run_id, payee_id, amount_fen, priority, pending_id, bank_account,
    # sources, created_at_ns, state, attempt, file_ref, bank_ref, reason, updated_at_ns)
    f = _astuple(p)
    payout_id: Boxed = f[0]
    trade_ids = cl._payout_trade_ids.get(payout_id)
    if trade_ids is None:
        trade_ids = cl._payout_trade_ids[payout_id] = payout_trade_ids(f[7])
    return _PAYOUT_CHANGED(_ZERO, ts_ns, payout_id, f[1], f[2], f[9], f[10], f[3], f[4], f[12], f[13], trade_ids)


def run_payouts(cl: ClearingState, cmd: RunPayouts, out: list) -> None:
    ref = cmd.run_ref
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    if not 0 < len(ref) <= MAX_REF_LEN:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    run = cl.runs.get(ref)
    if run is not None:
        if run.poor_only != cmd.poor_only:
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        out.append(PayoutRunCreated(0, run.ts_ns, run.run_id, ref, tuple(run.payout_ids), run.total_fen,
                                    tuple(run.skipped_ids)))
        return None
    run_id = cl.counters.next_run_id
    cl.counters.next_run_id = run_id + 1
    run = PayoutRun(run_id, ref, cmd.poor_only, cmd.ts_ns, [], [], 0)
    cl.runs[ref] = run
    cl._final_at(cmd.ts_ns, FinalKind.RUN, ref)
    for payee_id in payees(cl, cmd.poor_only):
        who = cl.participants.get(payee_id)
        if who is None or not who.bank_verified:
            run.skipped_ids.append(payee_id)
            continue
        payout = create_payout(cl, run, who, cmd.ts_ns)
        out.append(payout_event(cl, payout, cmd.ts_ns))
    out.append(PayoutRunCreated(0, cmd.ts_ns, run_id, ref, tuple(run.payout_ids), run.total_fen,
                                tuple(run.skipped_ids)))
    return None


def payees(cl: ClearingState, poor_only: bool) -> list[int]:
    """Payees with money payable: registered poor households first, then by participant id."""
    # Two lists of ids, each sorted: ints sort on list.sort's fast path, (not poor, id) pairs would not.
    # The ledger's method is called on the ledger (compiled: a native call; a bound method taken
    # once would be a generic Python call on every payee).
    poor: list[int] = []
    others: list[int] = []
    ledger = cl.ledger
    for owner, account_id in cl._payable_accounts.items():
        if ledger.available_fen(account_id) > 0:
            if cl._is_poor(owner):
                poor.append(owner)
            elif not poor_only:
                others.append(owner)
    poor.sort()
    others.sort()
    return poor + others


def create_payout(cl: ClearingState, run: PayoutRun, who: Participant, ts_ns: Boxed) -> Payout:
    # ids, amount and time pass on as objects (Boxed): compiled, each is boxed once at most
    payee_id: Boxed = who.participant_id
    payable: Boxed = cl._payable_accounts[payee_id]  # accounts[(_PAYABLE, payee_id, 0)]
    amount: Boxed = cl.ledger.available_fen(payable)
    counters = cl.counters
    payout_id: Boxed = counters.next_payout_id
    counters.next_payout_id = payout_id + 1
    tid = cl._next_tid()
    cl._commit_one(_TRANSFER(tid, payable, _BANK, amount, _TC_PAYOUT, payout_id, _PENDING), ts_ns)
    priority = _SAME_DAY if who.poor_verified else _NORMAL
    sources = cl._take_payable(payee_id, amount)
    # every field by position (a keyword call costs more): the defaults of state, attempt, file_ref,
    # bank_ref and reason, then updated_at_ns and the account's bank and branch codes
    bank_code, branch_code = cl.bank_codes.get(payee_id, ("", ""))
    payout = _PAYOUT(payout_id, run.run_id, payee_id, amount, priority, tid, who.bank_account, sources,
                     ts_ns, _P_PENDING, 1, "", "", "", ts_ns, bank_code, branch_code)
    cl.payouts[payout_id] = payout
    run.payout_ids.append(payout_id)
    run.total_fen += amount
    return payout


def mark_payouts_sent(cl: ClearingState, cmd: MarkPayoutsSent, out: list) -> None:
    ref = cmd.file_ref
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    # (payout id, attempt) pairs of the objects as they came (Boxed): compiled, none is boxed anew
    payouts: Boxed = cmd.payouts
    pairs = [(p[0], p[1]) for p in payouts]
    if not all(_id_range(p) for p in pairs):
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    sent = cl.sent_files.get(ref)
    if sent is not None:
        if sent.payouts != pairs:
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        for payout_id, _ in pairs:
            out.append(payout_event(cl, cl.payouts[payout_id], cmd.ts_ns))
        return None
    if not 0 < len(ref) <= MAX_REF_LEN or not pairs or len(set(pairs)) != len(pairs) or len(cmd.sha256) > 64:
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    for payout_id, attempt in pairs:
        p = cl.payouts.get(payout_id)
        if p is None:
            return cl._reject(cmd, R.UNKNOWN_REFERENCE, f"P{payout_id}", out)
        if p.state != _P_PENDING or p.attempt != attempt:
            return cl._reject(cmd, R.INVALID_PAYOUT_STATE, f"P{payout_id}", out)
    cl.sent_files[ref] = SentFile(ref, pairs)
    cl._final_at(cmd.ts_ns, FinalKind.SENT_FILE, ref)
    if cmd.sha256:
        cl.file_digests[ref] = cmd.sha256
    ts_ns: Boxed = cmd.ts_ns
    for payout_id, _ in pairs:
        p = cl.payouts[payout_id]
        p.state, p.file_ref, p.updated_at_ns = _P_SENT, ref, ts_ns
        out.append(payout_event(cl, p, ts_ns))
    return None


def import_bank_confirmations(cl: ClearingState, cmd: ImportBankConfirmations, out: list) -> None:
    ref = cmd.file_ref
    if not cl._is_operator(cmd.participant_id):
        return cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
    # ids out of the journal's integer range are refused before anything is encoded (they would not encode)
    if not 0 < len(ref) <= MAX_REF_LEN or not all(_id_range((r.payout_id, r.attempt)) for r in cmd.rows):
        return cl._reject(cmd, R.INVALID_AMOUNT, ref, out)
    rows_hash = hashlib.blake2b(_ENCODER.encode(cmd.rows), digest_size=16).hexdigest()
    done = cl.bank_imports.get(ref)
    if done is not None:
        if done.rows_hash != rows_hash:
            return cl._reject(cmd, R.DUPLICATE_REFERENCE, ref, out)
        out.append(BankImportApplied(0, cmd.ts_ns, ref, done.applied, done.duplicates, tuple(done.errors)))
        return None
    if cmd.whole_file:
        problems = confirmation_problems(cl, cmd.rows)
        if problems:  # the file is refused whole and its reference stays free for the corrected file
            first = problems[0][1]
            reason = R.UNKNOWN_REFERENCE if first == "unknown_payout" else R.INVALID_PAYOUT_STATE
            return cl._reject(cmd, reason, ref, out)
    applied = duplicates = 0
    errors: list[tuple[int, str]] = []
    ts_ns: Boxed = cmd.ts_ns
    for row in cmd.rows:
        outcome = apply_confirmation(cl, row, ts_ns, out)
        if outcome == "applied":
            applied += 1
        elif outcome == "duplicate":
            duplicates += 1
        else:
            errors.append((row.payout_id, outcome))
    cl.bank_imports[ref] = BankImport(ref, rows_hash, applied, duplicates, errors)
    cl._final_at(cmd.ts_ns, FinalKind.BANK_IMPORT, ref)
    out.append(BankImportApplied(0, cmd.ts_ns, ref, applied, duplicates, tuple(errors)))
    return None


def confirmation_problems(cl: ClearingState, rows: Sequence[BankConfirmation]) -> list[tuple[int, str]]:
    """(index, code) of every row of a confirmation file that cannot be applied now: ``unknown_payout``,
    ``not_current_attempt`` (an answer for an older or a later attempt), ``invalid_payout_state``
    (not sent, or already answered otherwise) or ``repeated_payout`` (a second row for a payout). A
    row that repeats the payout's recorded answer is a harmless duplicate, not a problem."""
    problems: list[tuple[int, str]] = []
    seen: set[int] = set()
    for index, row in enumerate(rows):
        payout_id = row.payout_id
        code = confirmation_problem(cl, row) or ("repeated_payout" if payout_id in seen else "")
        seen.add(payout_id)
        if code:
            problems.append((index, code))
    return problems


def confirmation_problem(cl: ClearingState, row: BankConfirmation) -> str:
    p = cl.payouts.get(row.payout_id)
    if p is None:
        return "unknown_payout"
    if row.attempt != p.attempt:
        return "not_current_attempt"
    state = p.state
    if state == _P_SENT or (state == _P_CONFIRMED and row.ok and row.bank_ref == p.bank_ref) or (
            state == _P_FAILED and not row.ok):
        return ""
    return "invalid_payout_state"


def apply_confirmation(cl: ClearingState, row: object, ts_ns: Boxed, out: list) -> str:
    """One bank answer: "applied", "duplicate" or why it was not applied."""
    p = cl.payouts.get(row.payout_id)  # type: ignore[attr-defined]
    if p is None:
        return "unknown payout"
    ok, attempt, bank_ref = row.ok, row.attempt, row.bank_ref  # type: ignore[attr-defined]
    if attempt != p.attempt:
        return f"attempt {attempt} is not the current attempt {p.attempt}"
    state = p.state
    if state == _P_CONFIRMED and ok and bank_ref == p.bank_ref:
        return "duplicate"
    if state == _P_FAILED and not ok:
        return "duplicate"
    if state != _P_SENT:
        return f"payout is {state.name}"
    if ok:
        cl._commit_one(_TRANSFER(cl._next_tid(), _ZERO, _ZERO, _ZERO, _TC_PAYOUT, _ZERO, _POST, p.pending_id),
                         ts_ns)
        p.state, p.bank_ref, p.reason = _P_CONFIRMED, bank_ref, ""
        cl.final.append((ts_ns, _FINAL_PAYOUT, p.payout_id))
    else:
        p.state, p.bank_ref, p.reason = _P_FAILED, bank_ref, row.reason[:200]  # type: ignore[attr-defined]
    p.updated_at_ns = ts_ns
    out.append(payout_event(cl, p, ts_ns))
    return "applied"


def retry_payout(cl: ClearingState, cmd: RetryPayout, out: list) -> None:
    ref = f"P{cmd.payout_id}"
    p = failed_payout(cl, cmd, ref, out, allow_pending=False)
    if p is None:
        return None
    who = cl.participants[p.payee_id]
    if not who.bank_verified:
        return cl._reject(cmd, R.BANK_ACCOUNT_NOT_VERIFIED, ref, out)
    p.state, p.attempt, p.bank_account = PayoutState.PENDING, p.attempt + 1, who.bank_account
    p.bank_code, p.branch_code = cl.bank_codes.get(who.participant_id, ("", ""))
    p.file_ref = p.bank_ref = p.reason = ""
    p.updated_at_ns = cmd.ts_ns
    out.append(payout_event(cl, p, cmd.ts_ns))
    return None


def return_payout(cl: ClearingState, cmd: ReturnPayout, out: list) -> None:
    ref = f"P{cmd.payout_id}"
    p = failed_payout(cl, cmd, ref, out, allow_pending=True)
    if p is None:
        return None
    cl._commit_one(Transfer(cl._next_tid(), 0, 0, 0, TC.PAYOUT_RETURN, 0, _VOID, p.pending_id), cmd.ts_ns)
    # its money is payable again, still traceable to the same trades, ahead of newer proceeds
    cl.payables[p.payee_id] = [msgspec.structs.replace(s) for s in p.sources] + cl.payables.get(p.payee_id, [])
    p.state, p.updated_at_ns = PayoutState.RETURNED, cmd.ts_ns
    cl._final_at(cmd.ts_ns, FinalKind.PAYOUT, p.payout_id)
    out.append(payout_event(cl, p, cmd.ts_ns))
    return None


def failed_payout(
    cl: ClearingState, cmd: RetryPayout | ReturnPayout, ref: str, out: list, allow_pending: bool
) -> Payout | None:
    if not cl._is_operator(cmd.participant_id):
        cl._reject(cmd, R.NOT_AUTHORIZED, ref, out)
        return None
    p = cl.payouts.get(cmd.payout_id)
    if p is None:
        cl._reject(cmd, R.UNKNOWN_REFERENCE, ref, out)
        return None
    if p.state != PayoutState.FAILED and not (allow_pending and p.state == PayoutState.PENDING):
        cl._reject(cmd, R.INVALID_PAYOUT_STATE, ref, out)
        return None
    return p


def _id_range(values: tuple) -> bool:
    """Whether every value is a whole number 1..MAX_INT64 (ids, attempts): what the journal, the ledger and
    PostgreSQL can hold."""
    return all(type(v) is int and 0 < v <= MAX_INT64 for v in values)
