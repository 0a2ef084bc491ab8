"""Settlement: the double-entry ledger and the money flows built on it (issue 5).

- ``ledger``: TigerBeetle-style accounts and transfers, the chart of accounts, posting rows.
- ``clearing``: ``Clearing``, the core's settlement stage: participants, holds, obligations,
  deliveries and disputes, the settlement waterfall, financing, payouts (its docstring lists the flows).
- ``rules``: every computation from weights, prices, shares and rates to fen, one rounding rule each.
- ``model``: the clearing's records; ``views``: balances, financiers' views, the daily report;
  ``bankfiles``: payout file export and confirmation import; ``pgstore``: the PostgreSQL side
  (``LedgerWriter`` for the sequencer's ``extra_writes``, balances, statements).
"""

from exchange.settlement.clearing import Clearing, ClearingInvariantError
from exchange.settlement.ledger import (
    ACCOUNT_COLUMNS,
    CHART,
    LEDGER_CNY,
    MAX_INT64,
    NO_ROWS,
    POSTING_COLUMNS,
    Account,
    AccountCode,
    AccountFlags,
    ChartEntry,
    CreateAccountResult,
    CreateTransferResult,
    Entry,
    Ledger,
    PendingStatus,
    Posting,
    PostingSide,
    Transfer,
    TransferCode,
    TransferFlags,
    account_records,
    posting_records,
)

__all__ = [
    "ACCOUNT_COLUMNS",
    "CHART",
    "LEDGER_CNY",
    "MAX_INT64",
    "NO_ROWS",
    "POSTING_COLUMNS",
    "Account",
    "AccountCode",
    "AccountFlags",
    "ChartEntry",
    "Clearing",
    "ClearingInvariantError",
    "CreateAccountResult",
    "CreateTransferResult",
    "Entry",
    "Ledger",
    "PendingStatus",
    "Posting",
    "PostingSide",
    "Transfer",
    "TransferCode",
    "TransferFlags",
    "account_records",
    "posting_records",
]
