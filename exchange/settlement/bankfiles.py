"""The bank's files: payout instructions out (bytes), confirmations in (parsed into a command's rows).

Pure functions. The export does not change state: the gateway renders the file, stores its bytes and
SHA-256, then sends ``MarkPayoutsSent`` with the file's (payout_id, attempt) pairs and the digest; the
bank's answer comes back as an ``ImportBankConfirmations`` command built from ``read_confirmations``.

Payout file, format ``HOGXPAY1`` (the README's "The bank payout file" has the table of every field):
UTF-8 without BOM, CRLF after every record, comma-separated, a field quoted (``"``, doubled inside)
only when it holds a comma, a quote or a line break. The first field of a record is its type: one
``H`` header (the file, the value date, the payer), one ``D`` detail per payout (same-day payouts of
registered poor households first, then by payout id), one ``T`` trailer (count and total of the
details)::

    H,HOGXPAY1,F-20260105,20260105,CNY,重庆荣昌生猪交易市场,3100000000000000001,102,102653000019
    D,1,7,1,SAME_DAY,21,张三,6217000000000021,102,102653000123,1203243,12032.43,HOGX-P7-A1,12;15
    T,1,1203243,12032.43

``reference`` (``HOGX-P<payout>-A<attempt>``) is the bank's idempotency key: the bank pays one
reference at most once, so resending a file is harmless, and a retry is a new attempt with a new
reference. ``trade_ids`` traces the money to its trades. The payee's name and bank and branch codes are
those of its profile when the file is rendered, the account the one the payout was made (or retried)
to. The format never changes under its name: a new layout gets a new format name.

Confirmation file: ``payout_id,attempt,status,bank_ref,reason`` with ``status`` ``OK`` or ``FAILED``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec

from exchange.commands import BankConfirmation
from exchange.events import PayoutState
from exchange.settlement.clearing import Clearing
from exchange.settlement.model import Payout
from exchange.settlement.rules import yuan

PAYOUT_FORMAT = "HOGXPAY1"
HEADER_FIELDS = ("record_type", "format", "file_ref", "value_date", "currency", "payer_name", "payer_account",
                 "payer_bank_code", "payer_branch_code")
DETAIL_FIELDS = ("record_type", "line_no", "payout_id", "attempt", "priority", "payee_id", "payee_name",
                 "payee_account", "payee_bank_code", "payee_branch_code", "amount_fen", "amount_yuan", "reference",
                 "trade_ids")
TRAILER_FIELDS = ("record_type", "record_count", "total_fen", "total_yuan")
CONFIRMATION_COLUMNS = ("payout_id", "attempt", "status", "bank_ref", "reason")
MAX_CONFIRMATION_ROWS = 100_000
MAX_FILE_INT = 2**53 - 1  # ids and attempts in files: what a JSON client reads exactly (and far inside int64)


class Payer(msgspec.Struct, frozen=True, kw_only=True):
    """The exchange's own settlement account, which the bank debits for every payout of a file."""

    name: str
    account: str
    bank_code: str  # 3 digits
    branch_code: str  # 12 digits


class PayoutFile(msgspec.Struct, frozen=True):
    """A payout file read back (``read_payout_file``): its records as field-name -> text mappings."""

    header: dict[str, str]
    details: list[dict[str, str]]
    trailer: dict[str, str]


def payout_reference(payout_id: int, attempt: int) -> str:
    return f"HOGX-P{payout_id}-A{attempt}"


def payouts_to_send(clearing: Clearing) -> list[Payout]:
    """Every PENDING payout: same-day first, then by payout id."""
    pending = [p for p in clearing.payouts.values() if p.state == PayoutState.PENDING]
    return sorted(pending, key=lambda p: (p.priority, p.payout_id))


def value_date(day: int) -> str:
    """A CST day number (``rules.cst_day``) as the file's ``YYYYMMDD``."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).strftime("%Y%m%d")


def bank_file_csv(clearing: Clearing, payouts: Iterable[Payout], *, file_ref: str, value_day: int,
                  payer: Payer) -> bytes:
    """The payout file ``file_ref`` for ``payouts`` (e.g. ``payouts_to_send(clearing)``), to be paid on the
    CST day ``value_day``, from ``payer``'s account."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["H", PAYOUT_FORMAT, file_ref, value_date(value_day), "CNY", _text(payer.name), payer.account,
                     payer.bank_code, payer.branch_code])
    total = count = 0
    for p in sorted(payouts, key=lambda p: (p.priority, p.payout_id)):
        who = clearing.participants[p.payee_id]
        bank_code, branch_code = clearing.bank_codes.get(p.payee_id, ("", ""))
        count += 1
        total += p.amount_fen
        writer.writerow([
            "D", count, p.payout_id, p.attempt, p.priority.name, p.payee_id, _text(who.name), p.bank_account,
            bank_code, branch_code, p.amount_fen, yuan(p.amount_fen), payout_reference(p.payout_id, p.attempt),
            ";".join(map(str, p.trade_ids)),
        ])  # fmt: skip
    writer.writerow(["T", count, total, yuan(total)])
    return out.getvalue().encode()


def read_payout_file(data: bytes) -> PayoutFile:
    """A payout file's records by field name; ``ValueError`` if it is not a well-formed ``HOGXPAY1`` file
    (record types, field counts, the trailer's count and total)."""
    records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    if len(records) < 2 or records[0][:1] != ["H"] or records[-1][:1] != ["T"]:
        raise ValueError("a payout file is one H record, D records, one T record")
    header, trailer = dict(zip(HEADER_FIELDS, records[0], strict=True)), dict(zip(TRAILER_FIELDS, records[-1],
                                                                                  strict=True))
    details = [dict(zip(DETAIL_FIELDS, r, strict=True)) for r in records[1:-1]]
    if any(d["record_type"] != "D" for d in details) or header["format"] != PAYOUT_FORMAT:
        raise ValueError("not a HOGXPAY1 payout file")
    if (int(trailer["record_count"]), int(trailer["total_fen"])) != (
            len(details), sum(int(d["amount_fen"]) for d in details)):
        raise ValueError("the trailer does not match the details")
    return PayoutFile(header, details, trailer)


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
