"""Ordered SQL migrations (`NNNN_name.sql`), applied by `exchange.store.migrate`.

Numbering: 0001 journal and snapshots, 0002 ledger, 0003 gateway, later ones the sequencer's read
models. An applied file must never be edited: add a new one instead (the runner checks checksums).
"""
