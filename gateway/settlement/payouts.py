"""Payouts and bank files over HTTP (operator): `POST /v1/payout-runs`, `POST /v1/payout-files` (the bank
file of every pending payout, stored, then marked sent), `GET /v1/payout-files/{file_ref}`,
`POST /v1/payout-confirmations` (the bank's answer), `POST /v1/payouts/{payout_id}/retry|return`;
`GET /v1/payouts` and `GET /v1/payouts/{payout_id}` (a payee's own, every payout for an operator).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterable
from typing import Final

import msgspec
from aiohttp import web

from exchange.commands import (
    ImportBankConfirmations,
    MarkPayoutsSent,
    RetryPayout,
    ReturnPayout,
    RunPayouts,
)
from exchange.events import PayoutState, Rejected
from exchange.settlement import Clearing, pgstore
from exchange.settlement.bankfiles import (
    ConfirmationFile,
    LineProblem,
    Payer,
    bank_file_csv,
    payout_reference,
    payouts_to_send,
    read_confirmations,
    sent_pairs,
)
from exchange.settlement.model import Payout, SentFile
from exchange.settlement.rules import cst_day
from gateway import store
from gateway.auth import ANY_ROLE, OPERATORS
from gateway.errors import ApiError, Code
from gateway.exchange_port import EXCHANGE
from gateway.inputs import refuse_control_characters
from gateway.routes import Call, RouteTable
from gateway.schemas import Id, Limit, rejection
from gateway.settlement.common import (
    COMMIT_POLL_S,
    COMMIT_WAIT_S,
    CSV,
    SHA256_HEADER,
    CsvText,
    Cursor,
    PayoutStateName,
    R,
    Ref,
    archived_page,
    archived_record,
    clearing_of,
    csv_response,
    is_operator,
    masked,
    newest,
    newest_held,
    submit,
    to_ms,
)
from gateway.state import CONFIG

routes = RouteTable()

# -- payouts and bank files -----------------------------------------------------------------------------


class PayoutRunRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One payout per payee with money payable and a verified bank account, registered poor households
    first; `run_ref` makes it idempotent, `poor_only` pays only them (a same-day run)."""

    run_ref: Ref
    poor_only: bool = False


class PayoutView(msgspec.Struct, frozen=True):
    payout_id: int
    run_id: int
    payee_id: int
    amount_fen: int
    priority: str  # SAME_DAY (registered poor households) or NORMAL
    state: PayoutStateName
    attempt: int
    reference: str  # the bank's idempotency key of this attempt
    bank_account: str  # masked: the last four digits
    file_ref: str
    bank_ref: str
    reason: str
    trade_ids: list[int]
    created_ms: int
    updated_ms: int


class PayoutRunView(msgspec.Struct, frozen=True):
    run_id: int
    run_ref: str
    poor_only: bool
    total_fen: int
    payouts: list[PayoutView]  # in payment order: same-day first
    skipped_payee_ids: list[int]  # money payable, but no verified bank account
    created_ms: int


class PayoutFileRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Export every pending payout as the bank file `file_ref` and mark them sent."""

    file_ref: Ref


class PayoutFilePath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    file_ref: Ref


class ConfirmationImportRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The bank's confirmation file: header `payout_id,attempt,status,bank_ref,reason`, status OK or
    FAILED. `file_ref` makes the import idempotent; a refused file leaves it unused."""

    file_ref: Ref
    csv: CsvText


class ImportErrorRow(msgspec.Struct, frozen=True):
    payout_id: int
    reason: str


class ConfirmationImportView(msgspec.Struct, frozen=True):
    file_ref: str
    applied: int
    duplicates: int  # rows that repeat a payout's recorded answer
    errors: list[ImportErrorRow]  # empty: a file with a bad row is refused whole (older imports may list some)


class PayoutPath(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payout_id: Id


class PayoutQuery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    state: PayoutStateName | None = None
    cursor: Cursor | None = None
    limit: Limit = 100


class PayoutPage(msgspec.Struct, frozen=True):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    payouts: list[PayoutView]
    next_cursor: str | None


def _payout_view(p: Payout) -> PayoutView:
    return PayoutView(p.payout_id, p.run_id, p.payee_id, p.amount_fen, p.priority.name,
                      PayoutStateName[p.state.name], p.attempt, payout_reference(p.payout_id, p.attempt),
                      masked(p.bank_account), p.file_ref, p.bank_ref, p.reason, list(p.trade_ids),
                      to_ms(p.created_at_ns), to_ms(p.updated_at_ns))


@routes.post("/v1/payout-runs", roles=OPERATORS, body=PayoutRunRequest, response=PayoutRunView, status=201,
             errors=(409,))
async def run_payouts(call: Call, body: PayoutRunRequest) -> PayoutRunView:
    """Create a payout run: one instruction per payee, registered poor households first."""
    await submit(call, RunPayouts(call.principal.participant_id, 0, body.run_ref, body.poor_only))
    clearing = clearing_of(call)
    run = clearing.runs[body.run_ref]
    payouts = sorted((clearing.payouts[i] for i in run.payout_ids), key=lambda p: (p.priority, p.payout_id))
    return PayoutRunView(run.run_id, run.run_ref, run.poor_only, run.total_fen, [_payout_view(p) for p in payouts],
                         list(run.skipped_ids), to_ms(run.ts_ns))


def _render(call: Call, clearing: Clearing, file_ref: str, payouts: Iterable[Payout]) -> bytes:
    """The payout file of `payouts`, value date today (CST), debiting the configured payer's account;
    422 `payer_not_configured` if there is none (a real market without HOGX_PAYER_*)."""
    settings = call.app[CONFIG].payer()
    if settings is None:
        raise ApiError(422, "payer_not_configured", "no payout file without the exchange's settlement account: "
                       "set HOGX_PAYER_NAME, HOGX_PAYER_ACCOUNT, HOGX_PAYER_BANK_CODE and HOGX_PAYER_BRANCH_CODE")
    name, account, bank_code, branch_code = settings
    payer = Payer(name=name, account=account, bank_code=bank_code, branch_code=branch_code)
    return bank_file_csv(clearing, payouts, file_ref=file_ref, value_day=cst_day(time.time_ns()), payer=payer)


async def _bank_file(call: Call, file_ref: str) -> web.Response:
    """The file as sent, byte for byte (stored before it was sent), with its SHA-256 in `X-Hogx-SHA256`.
    A file sent before files were stored is rendered again: not the original (today's layout and value
    date, the current names), so it comes without `X-Hogx-SHA256`."""
    clearing = clearing_of(call)
    digest = clearing.file_digests.get(file_ref)
    if digest is None:
        # Sent before files were stored: rendered again, each payout under the attempt the file carried.
        sent = clearing.sent_files[file_ref]
        payouts = [msgspec.structs.replace(clearing.payouts[pid], attempt=attempt) for pid, attempt in sent.payouts]
        return csv_response(_render(call, clearing, file_ref, payouts), f"{file_ref}.csv")
    return await _stored_file(call, file_ref, digest)


async def _stored_file(call: Call, file_ref: str, digest: str) -> web.Response:
    """The stored bytes of the file sent under `file_ref` with this SHA-256."""
    stored = await store.load_payout_file(call.pool, file_ref, digest)
    if stored is None:  # stored before its command was journaled: never missing unless the table was edited
        raise RuntimeError(f"payout file {file_ref} ({digest}) is not in payout_files")
    response = csv_response(stored, f"{file_ref}.csv")
    response.headers[SHA256_HEADER] = hashlib.sha256(stored).hexdigest()
    return response


async def _archived_bank_file(call: Call, file_ref: str) -> web.Response | None:
    """A file the clearing forgot: the bytes stored when it was sent, or (sent before files were stored)
    rendered again from history, its payouts from memory or history; None if there never was one."""
    clearing = clearing_of(call)
    if file_ref in clearing.file_digests:
        return await _bank_file(call, file_ref)
    digest = await archived_record(call, pgstore.HISTORY_FILE_DIGEST, str, 0, file_ref)  # forgotten with its file
    if digest is not None:
        return await _stored_file(call, file_ref, digest)
    sent = await archived_record(call, pgstore.HISTORY_SENT_FILE, SentFile, 0, file_ref)
    if sent is None:
        return None
    payouts = []
    for payout_id, attempt in sent.payouts:
        p = clearing.payouts.get(payout_id) or await archived_record(call, pgstore.HISTORY_PAYOUT, Payout, payout_id)
        if p is None:
            raise ApiError(503, Code.UNAVAILABLE, f"payout {payout_id} of the file is being archived: try again")
        payouts.append(msgspec.structs.replace(p, attempt=attempt))
    content = _render(call, clearing, file_ref, payouts)
    response = csv_response(content, f"{file_ref}.csv")
    response.headers[SHA256_HEADER] = hashlib.sha256(content).hexdigest()
    return response


@routes.post("/v1/payout-files", roles=OPERATORS, body=PayoutFileRequest, response=None, media_type=CSV,
             status=201, errors=(409,))
async def export_payout_file(call: Call, body: PayoutFileRequest) -> web.Response:
    """Export the bank file of every pending payout (format `HOGXPAY1`, see the README) and mark them
    sent; a repeat returns the same bytes. The file is stored (with its SHA-256, sent in `X-Hogx-SHA256`)
    before the command marking its payouts sent is journaled, and handed out only once that is durable."""
    clearing = clearing_of(call)
    sent = clearing.sent_files.get(body.file_ref)
    if sent is None:
        pending = payouts_to_send(clearing)
        if not pending:
            raise ApiError(409, "no_pending_payouts", "there is no pending payout to send")
        pairs = sent_pairs(pending)
        content = _render(call, clearing, body.file_ref, pending)
        digest = hashlib.sha256(content).hexdigest()
        await store.store_payout_file(call.pool, body.file_ref, digest, content)
    else:
        # The live core may show a file whose command is still being committed (a client's retry after a
        # timeout): the same command again is idempotent, and its durable answer implies the first's.
        pairs = tuple((payout_id, attempt) for payout_id, attempt in sent.payouts)
        digest = clearing.file_digests.get(body.file_ref, "")
    await submit(call, MarkPayoutsSent(call.principal.participant_id, 0, body.file_ref, pairs, digest))
    response = await _bank_file(call, body.file_ref)
    response.set_status(201)
    return response


@routes.get("/v1/payout-files/{file_ref}", roles=OPERATORS, params=PayoutFilePath, response=None,
            media_type=CSV)
async def get_payout_file(call: Call, params: PayoutFilePath) -> web.Response:
    """Download an exported bank file again: the bytes that were sent (`X-Hogx-SHA256` their digest), only
    once the command that made it is durable. A file sent before files were stored is rendered again
    (today's layout and value date) and comes without `X-Hogx-SHA256`: it is not the original."""
    while True:
        clearing = clearing_of(call)
        if params.file_ref not in clearing.sent_files:
            archived = await _archived_bank_file(call, params.file_ref)
            if archived is None:
                raise rejection(R.UNKNOWN_REFERENCE)
            return archived
        if await _committed(call):
            return await _bank_file(call, params.file_ref)


async def _committed(call: Call) -> bool:
    """Wait until everything the live core shows at this moment is durable: True; False if the core was
    rebuilt meanwhile (a commit failed: what it showed may be gone, so look again). Raises 503 after
    `COMMIT_WAIT_S`.

    The core shows commands up to `applied_seq`; once `committed_seq` reaches that seq with the same core
    object (a rebuild replaces it, and reuses the seqs of a lost batch), all of them are in the journal."""
    sequencer = call.app[EXCHANGE].sequencer
    core, shown_seq = sequencer.core, sequencer.applied_seq
    deadline = time.monotonic() + COMMIT_WAIT_S
    while sequencer.committed_seq < shown_seq and sequencer.core is core:
        if time.monotonic() > deadline:
            raise ApiError(503, Code.UNAVAILABLE, "the file is not committed yet: try again")
        await asyncio.sleep(COMMIT_POLL_S)
    return sequencer.core is core


class BankFileRefused(ApiError):
    """422 `invalid_bank_file` whose message lists every bad line of the file, each as
    `line <number> <code>: <why>`, separated by `; ` (the error body stays `{code, message}`)."""

    def __init__(self, problems: Iterable[LineProblem]) -> None:
        lines = sorted(problems, key=lambda p: p.line)
        listed = "; ".join(f"line {p.line} {p.code}: {_LINE_PREFIX.sub('', p.message)}" for p in lines)
        super().__init__(422, "invalid_bank_file", f"{len(lines)} bad line(s), nothing was applied (correct the file "
                         f"and send it again under the same file_ref): {listed}")


_LINE_PREFIX: Final = re.compile(r"^line \d+: ")


def _confirmation_problems(clearing: Clearing, read: ConfirmationFile) -> list[LineProblem]:
    """The rows the clearing could not apply now, by line (see `Clearing.confirmation_problems`)."""
    return [LineProblem(read.lines[index], code, f"payout {read.rows[index].payout_id}: {code.replace('_', ' ')}")
            for index, code in clearing.confirmation_problems(read.rows)]


@routes.post("/v1/payout-confirmations", roles=OPERATORS, body=ConfirmationImportRequest,
             response=ConfirmationImportView, errors=(409,))
async def import_confirmations(call: Call, body: ConfirmationImportRequest) -> ConfirmationImportView:
    """Import the bank's confirmation file: confirmed payouts are final, failed ones wait for a retry. The
    file is applied whole or not at all: any bad line (unreadable, an unknown payout, another attempt, a
    payout not sent, a payout named twice) is a 422 `invalid_bank_file` whose message lists every bad
    line (`line <n> <code>: <why>`), and leaves `file_ref` unused, so the corrected file is sent under the
    same reference."""
    read = read_confirmations(body.csv.encode())
    if read.problems:
        raise BankFileRefused(read.problems)
    for row in read.rows:  # the file's free text, held to the same rule as every text field
        refuse_control_characters(row.bank_ref, f"payout {row.payout_id}: bank_ref")
        refuse_control_characters(row.reason, f"payout {row.payout_id}: reason")
    if body.file_ref not in clearing_of(call).bank_imports:  # (a repeat is answered as the first time)
        problems = _confirmation_problems(clearing_of(call), read)
        if problems:
            raise BankFileRefused(problems)
    command = ImportBankConfirmations(call.principal.participant_id, 0, body.file_ref, read.rows, whole_file=True)
    result = await call.app[EXCHANGE].submit(command)
    for event in result.events:
        if event.__class__ is Rejected:
            moved = event.reason in (R.UNKNOWN_REFERENCE, R.INVALID_PAYOUT_STATE)  # since the check above
            problems = _confirmation_problems(clearing_of(call), read) if moved else []
            raise BankFileRefused(problems) if problems else rejection(event.reason)
    done = clearing_of(call).bank_imports[body.file_ref]
    return ConfirmationImportView(done.file_ref, done.applied, done.duplicates,
                                  [ImportErrorRow(pid, reason) for pid, reason in done.errors])


async def _visible_payout(call: Call, payout_id: int) -> Payout:
    payout = clearing_of(call).payouts.get(payout_id)
    if payout is None:
        payout = await archived_record(call, pgstore.HISTORY_PAYOUT, Payout, payout_id)
    if payout is None or not (is_operator(call.principal) or payout.payee_id == call.principal.participant_id):
        raise rejection(R.UNKNOWN_REFERENCE)
    return payout


@routes.post("/v1/payouts/{payout_id}/retry", roles=OPERATORS, params=PayoutPath, response=PayoutView,
             errors=(404, 409))
async def retry_payout(call: Call, params: PayoutPath) -> PayoutView:
    """Send a failed payout again, as a new attempt to the payee's current verified account."""
    await submit(call, RetryPayout(call.principal.participant_id, 0, params.payout_id))
    return _payout_view(await _visible_payout(call, params.payout_id))


@routes.post("/v1/payouts/{payout_id}/return", roles=OPERATORS, params=PayoutPath, response=PayoutView,
             errors=(404, 409))
async def return_payout(call: Call, params: PayoutPath) -> PayoutView:
    """Give a failed (or unsent) payout up: its money is payable to the payee again."""
    await submit(call, ReturnPayout(call.principal.participant_id, 0, params.payout_id))
    return _payout_view(await _visible_payout(call, params.payout_id))


@routes.get("/v1/payouts/{payout_id}", roles=ANY_ROLE, params=PayoutPath, response=PayoutView)
async def get_payout(call: Call, params: PayoutPath) -> PayoutView:
    """One of your payouts (an operator: any payout)."""
    return _payout_view(await _visible_payout(call, params.payout_id))


@routes.get("/v1/payouts", roles=ANY_ROLE, query=PayoutQuery, response=PayoutPage)
async def list_payouts(call: Call, query: PayoutQuery) -> PayoutPage:
    """Your payouts (an operator: every payout), newest first, optionally by state."""
    clearing, principal = clearing_of(call), call.principal
    before = None if query.cursor is None else int(query.cursor)
    state = None if query.state is None else PayoutState[query.state.name]
    memory = newest_held(clearing.payouts, before, lambda p: (state is None or p.state == state)
                         and (is_operator(principal) or p.payee_id == principal.participant_id), query.limit)
    archived: list[tuple[int, Payout]] = []
    if state in (None, PayoutState.CONFIRMED, PayoutState.RETURNED):
        found = await archived_page(call, pgstore.HISTORY_PAYOUT, Payout, before, state, query.limit + 1)
        archived = [(p.payout_id, p) for p in found]
    payouts, more = newest(memory, archived, query.limit)
    page = [_payout_view(p) for p in payouts]
    return PayoutPage(page, str(page[-1].payout_id) if more else None)


