"""Settlement over HTTP: money in and out, deliveries and disputes, payouts and bank files, financing,
balances, statements and the daily settlement report (issue 5's API).

Routes (roles in brackets; "party" = the trade's buyer or seller):

- Money in and out: `POST /v1/deposits` and `POST /v1/deposit-imports` (operator; the bank's deposit
  file as CSV), `POST /v1/withdrawals` (a participant, from its own cash or funds),
  `POST /v1/withdrawals/confirmations` (operator), `GET /v1/withdrawals`.
- Deliveries: `POST /v1/trades/{trade_id}/weigh-in` (the seller or an operator: heads delivered and
  their live weight, heads refused or dead on arrival, unfasted, the lot's quarantine certificate),
  `.../dispute` (a party, inside the dispute window; the seller's holds up to 5 % of the amount from the
  buyer, what a raise may cost), `.../rejection` (the buyer, of an out-of-grade delivery),
  `.../resolution` (operator: lowers the amount, or raises it within a seller's dispute hold),
  `GET /v1/trades/{trade_id}/settlement`, `GET /v1/settlement/trades`.
- Payouts (operator): `POST /v1/payout-runs`; `POST /v1/payout-files` exports the bank file of every
  pending payout (format `HOGXPAY1`, `text/csv`, see the README), stores its bytes and SHA-256, then
  marks those payouts sent in one journaled command naming the digest; `GET /v1/payout-files/{file_ref}`
  downloads the stored bytes again; `POST /v1/payout-confirmations` imports the bank's answer (CSV in
  JSON; refused whole, every bad line listed, if any line is bad);
  `POST /v1/payouts/{payout_id}/retry|return`. `GET /v1/payouts` and `GET /v1/payouts/{payout_id}`: a
  payee's own, every payout for an operator.
- Financing: `POST /v1/credit-lines`, `POST /v1/credit-lines/{buyer_id}/reduce`, `POST /v1/advances`
  (financier), `GET /v1/financing/clients[/{participant_id}]` (financier: exposures, loans
  outstanding, repayments and the settlement state of every financed trade, of participants that consent
  to it or owe it: a financier always sees and may reduce its own credit lines and loans, also after
  the borrower withdrew consent), `POST /v1/loans/{loan_id}/write-off` (financier, its own loan),
  `POST /v1/repayments` and `GET /v1/loans` (the borrower).
- Every participant: `GET /v1/balances`, `GET /v1/statements`, `GET /v1/reports/settlement` (JSON)
  and `GET /v1/reports/settlement.csv`.
- Operator settings: `POST /v1/admin/fee-schedule`, `POST /v1/admin/financing-policy` (`GET`: every
  participant, a rule of the market).

(Participant profiles, verification, cooperative members and consent are in `gateway.participants`.)

Modules, one per flow, each with its own route table: `funds` (money in and out), `deliveries`,
`payouts`, `financing`, `reports` (balances, statements, reports) and `settings`; `common` holds what
they share. `ROUTE_TABLES` below is where they are registered, in the order the API lists them.

Every change is one command through the sequencer, answered once it is durable; a rejection becomes
`{"code": <reason>, ...}` with the status of `schemas.REJECT_STATUS` (the one table for the core's
reasons). Reads come from the clearing of the sequencer's core in this process through
`exchange.settlement.views`; the core may already include commands of the batch being committed (a
few milliseconds ahead of the journal), which become durable or, if that commit fails, vanish with
the rebuilt core. Bank payout files are the exception: money leaves on them, so a file is handed out
(also again) only once the command that made it is durable. Statements are read from the ledger rows
in PostgreSQL, which commit with their batch; the daily settlement report from the settlement history
in PostgreSQL (`exchange.history`), once it holds everything the core has applied. Another
participant's trade, payout, account or client is a 404, exactly like a missing one; to a financier, a
participant that neither consents to it nor owes it anything does not exist.
"""

from __future__ import annotations

from gateway.routes import RouteTable
from gateway.schemas import rejection
from gateway.settlement import deliveries, financing, funds, payouts, reports, settings
from gateway.settlement.common import (
    BORROWERS,
    MAX_CSV_CHARS,
    SHA256_HEADER,
    clearing_of,
    refuse_expired_reference,
    submit,
)
from gateway.settlement.funds import DepositImportRequest, parse_deposits_csv

__all__ = [
    "BORROWERS",
    "MAX_CSV_CHARS",
    "ROUTE_TABLES",
    "SHA256_HEADER",
    "DepositImportRequest",
    "clearing_of",
    "parse_deposits_csv",
    "refuse_expired_reference",
    "rejection",
    "submit",
]

# The settlement routes, installed by gateway.app in this order (the order the API and its OpenAPI list them).
ROUTE_TABLES: tuple[RouteTable, ...] = (funds.routes, deliveries.routes, payouts.routes, financing.routes,
                                        reports.routes, settings.routes)
