"""Migration 0008: the write path's storage choices (journal.events compressed with lz4 where the server
has it, fillfactor 100 on the append-only primary keys), on whichever server the run uses."""

from __future__ import annotations

import asyncpg

from exchange import store


async def _server_has_lz4(conn: asyncpg.Connection) -> bool:
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL default_toast_compression = 'lz4'")
    except asyncpg.InvalidParameterValueError:
        return False
    return True


async def test_large_events_are_compressed_with_lz4_where_the_server_has_it(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        lz4 = await _server_has_lz4(conn)
        column = await conn.fetchval(
            "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'journal'::regclass AND attname = 'events'")
        assert column == ("l" if lz4 else "")  # "": the server's default, pglz
        seq = await conn.fetchval("SELECT coalesce(max(seq), 0) + 1000000 FROM journal")
        await store.ensure_journal_partitions(conn, [1])  # the day of ts_ns 1 (migration 0013)
        events = b"a clock tick that settles many trades " * 400  # large and compressible, as such rows are
        await conn.execute("INSERT INTO journal (seq, ts_ns, command, events) VALUES ($1, 1, $2, $3)",
                           seq, b"c", events)
        stored, method = await conn.fetchrow(
            "SELECT events, pg_column_compression(events) FROM journal WHERE seq = $1", seq)
        assert stored == events
        assert method == ("lz4" if lz4 else "pglz")


async def test_append_only_primary_keys_pack_their_pages_full(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await store.ensure_journal_partitions(conn, [1])  # since 0013 each day's partition has its own key
        options = dict(await conn.fetch(
            "SELECT relname, reloptions FROM pg_class "
            "WHERE relname IN ('journal_19700101_pkey', 'journal_19700102_pkey', 'ledger_transfers_pkey')"))
    assert options == {"journal_19700101_pkey": ["fillfactor=100"], "journal_19700102_pkey": ["fillfactor=100"],
                       "ledger_transfers_pkey": ["fillfactor=100"]}
    assert max(m.version for m in store.load_migrations()) >= 8
