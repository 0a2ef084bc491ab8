"""Settlement: the double-entry ledger and the money flows built on it (issue 5).

- ``ledger``: TigerBeetle-style accounts and transfers, the chart of accounts, posting rows.
- ``clearing``: ``Clearing``, the core's settlement stage, which dispatches to the flows (its docstring
  lists them): ``state`` (the records and ledger plumbing they share), ``participants``, ``funds``
  (deposits, withdrawals), ``holds`` (holds and escrow), ``delivery`` (weigh-ins, disputes),
  ``settling`` (the settlement waterfall, fees), ``financing`` (credit lines, advances, loans,
  interest), ``payouts`` (payout runs, bank files, confirmations).
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
