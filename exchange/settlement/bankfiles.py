"""The bank's files: payout instructions out (CSV bytes), confirmations in (parsed into a command's rows).

Pure functions. The export does not change state: after handing the file to the bank an operator sends
``MarkPayoutsSent`` with the file's (payout_id, attempt) pairs, and the bank's answer comes back as an
``ImportBankConfirmations`` command built by ``parse_confirmations_csv``.

Payout file (UTF-8, CRLF, one header row), ordered same-day (registered poor households) first, then by
payout id::

    payout_id,attempt,priority,payee_id,payee_name,bank_account,amount_fen,amount_yuan,reference,trade_ids
    7,1,SAME_DAY,21,张三,6217000000000021,1203243,12032.43,HOGX-P7-A1,12;15

``reference`` (``HOGX-P<payout>-A<attempt>``) is the bank's idempotency key: the bank pays one
reference at most once, so resending a file is harmless, and a retry is a new attempt with a new
reference. ``trade_ids`` traces the money to its trades.

Confirmation file: ``payout_id,attempt,status,bank_ref,reason`` with ``status`` ``OK`` or ``FAILED``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec

from exchange.commands import BankConfirmation
from exchange.events import PayoutState
from exchange.settlement.clearing import Clearing
from exchange.settlement.model import Payout
from exchange.settlement.rules import yuan

PAYOUT_COLUMNS = ("payout_id", "attempt", "priority", "payee_id", "payee_name", "bank_account", "amount_fen",
                  "amount_yuan", "reference", "trade_ids")
CONFIRMATION_COLUMNS = ("payout_id", "attempt", "status", "bank_ref", "reason")
MAX_CONFIRMATION_ROWS = 100_000
MAX_FILE_INT = 2**53 - 1  # ids and attempts in files: what a JSON client reads exactly (and far inside int64)


def payout_reference(payout_id: int, attempt: int) -> str:
    return f"HOGX-P{payout_id}-A{attempt}"


def payouts_to_send(clearing: Clearing) -> list[Payout]:
    """Every PENDING payout: same-day first, then by payout id."""
    pending = [p for p in clearing.payouts.values() if p.state == PayoutState.PENDING]
    return sorted(pending, key=lambda p: (p.priority, p.payout_id))


def bank_file_csv(clearing: Clearing, payouts: Iterable[Payout]) -> bytes:
    """The payout instruction file for ``payouts`` (e.g. ``payouts_to_send(clearing)``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(PAYOUT_COLUMNS)
    for p in sorted(payouts, key=lambda p: (p.priority, p.payout_id)):
        who = clearing.participants[p.payee_id]
        writer.writerow([
            p.payout_id, p.attempt, p.priority.name, p.payee_id, _text(who.name), p.bank_account, p.amount_fen,
            yuan(p.amount_fen), payout_reference(p.payout_id, p.attempt), ";".join(map(str, p.trade_ids)),
        ])  # fmt: skip
    return out.getvalue().encode()


def sent_pairs(payouts: Iterable[Payout]) -> tuple[tuple[int, int], ...]:
    """The (payout_id, attempt) pairs of a file, for ``MarkPayoutsSent``."""
    return tuple(sorted((p.payout_id, p.attempt) for p in payouts))


_Row = TypeVar("_Row")


def read_csv_rows(
    text: str, columns: tuple[str, ...], max_rows: int, parse_row: Callable[[int, list[str]], _Row]
) -> list[_Row]:
    """The rows of a CSV file with exactly ``columns`` as its header, each parsed by ``parse_row(line_no,
    fields)``; blank lines are skipped. Raises ``ValueError`` naming the first bad line: a file is taken
    whole or not at all, never guessed at."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    rows: list[_Row] = []
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != columns:
            raise ValueError(f"line 1: header must be {','.join(columns)}")
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(rows) >= max_rows:
                raise ValueError(f"more than {max_rows} rows")
            rows.append(parse_row(line_no, fields))
    except csv.Error as exc:  # e.g. a field longer than the csv module's limit: a bad file, not a crash
        raise ValueError(f"line {reader.line_num}: {exc}") from None
    return rows


def parse_confirmations_csv(data: bytes) -> tuple[BankConfirmation, ...]:
    """The rows of a bank confirmation file. Raises ``ValueError`` naming the first bad line: a file
    is applied whole or not at all, never guessed at."""
    text = data.decode("utf-8-sig")
    return tuple(read_csv_rows(text, CONFIRMATION_COLUMNS, MAX_CONFIRMATION_ROWS, _confirmation))


class LineProblem(msgspec.Struct, frozen=True):
    """A bad line of a bank file: its number (the header is line 1), a stable code, and why."""

    line: int
    code: str
    message: str


class ConfirmationFile(msgspec.Struct, frozen=True):
    """A confirmation file read whole: the rows that parsed, the line of each, every bad line."""

    rows: tuple[BankConfirmation, ...]
    lines: tuple[int, ...]
    problems: tuple[LineProblem, ...]


def read_confirmations(data: bytes) -> ConfirmationFile:
    """Every row of a confirmation file and every line that does not parse (codes ``not_utf8``,
    ``bad_header``, ``bad_csv``, ``too_many_rows``, ``wrong_field_count``, ``invalid_payout_id``,
    ``invalid_attempt``, ``invalid_status``): a caller refuses the file if there is any problem, and
    lists them all, so the bank's file is corrected once, not line by line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ConfirmationFile((), (), (LineProblem(1, "not_utf8", f"the file is not UTF-8: {exc.reason}"),))
    reader = csv.reader(io.StringIO(text))
    rows: list[BankConfirmation] = []
    lines: list[int] = []
    problems: list[LineProblem] = []
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CONFIRMATION_COLUMNS:
            problems.append(LineProblem(1, "bad_header", f"the header must be {','.join(CONFIRMATION_COLUMNS)}"))
        for fields in reader:
            if not fields:
                continue
            if len(rows) + len(problems) >= MAX_CONFIRMATION_ROWS:
                problems.append(LineProblem(reader.line_num, "too_many_rows", f"more than {MAX_CONFIRMATION_ROWS}"))
                break
            try:
                rows.append(_confirmation(reader.line_num, fields))
                lines.append(reader.line_num)
            except _LineError as exc:
                problems.append(LineProblem(reader.line_num, exc.code, str(exc)))
    except csv.Error as exc:  # e.g. a field longer than the csv module's limit
        problems.append(LineProblem(reader.line_num, "bad_csv", f"line {reader.line_num}: {exc}"))
    return ConfirmationFile(tuple(rows), tuple(lines), tuple(problems))


class _LineError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_whole_number(text: str, what: str, line_no: int, minimum: int = 1, maximum: int = MAX_FILE_INT) -> int:
    """A whole number ``minimum..maximum`` in ASCII digits, or ``ValueError`` naming the line: a bank
    file's numbers must fit the journal's integers (msgpack, PostgreSQL ``bigint``), never crash it."""
    if (not (text.isascii() and text.isdigit()) or len(text) > len(str(maximum))
            or not minimum <= int(text) <= maximum):
        raise ValueError(f"line {line_no}: {what} must be a whole number from {minimum} to {maximum}, "
                         f"not {text[:30]!r}")
    return int(text)


def _confirmation(line_no: int, fields: list[str]) -> BankConfirmation:
    """One row; ``_LineError`` (a ``ValueError``) with a code naming what is wrong."""
    if len(fields) != len(CONFIRMATION_COLUMNS):
        raise _LineError("wrong_field_count",
                         f"line {line_no}: expected {len(CONFIRMATION_COLUMNS)} fields, got {len(fields)}")
    payout_id, attempt, status, bank_ref, reason = (f.strip() for f in fields)
    try:
        payout = parse_whole_number(payout_id, "payout_id", line_no)
    except ValueError as exc:
        raise _LineError("invalid_payout_id", str(exc)) from None
    try:
        attempt_no = parse_whole_number(attempt, "attempt", line_no)
    except ValueError as exc:
        raise _LineError("invalid_attempt", str(exc)) from None
    if status not in ("OK", "FAILED"):
        raise _LineError("invalid_status", f"line {line_no}: status must be OK or FAILED, not {status[:30]!r}")
    return BankConfirmation(payout, attempt_no, status == "OK", bank_ref, reason)


def _text(value: str) -> str:
    """Quote text a spreadsheet would run as a formula (names are typed in by people)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
