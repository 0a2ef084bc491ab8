"""Shared test set-up: the `--soak` switch and a real PostgreSQL for every test run.

The server is `DATABASE_URL` when set (CI points it at the machine's PostgreSQL), otherwise an
embedded one started in a temporary directory for the session. Either way each run works in its own
freshly created database, dropped at the end, so runs never see each other's rows.

Fixtures:
- `database_url` (session): DSN of this run's database, migrations applied.
- `pool` (function): an asyncpg pool on `database_url`.
- `ex` (module): `gateway.testing.running_exchange` on a fresh database, shared by a module's tests.
- `fresh_database_url` (function): `await fresh_database_url(migrated=True)` makes a brand-new
  database for one test (empty tables, or no tables at all with `migrated=False`), dropped after it;
  a module-scoped fixture takes `async with _test_databases.fresh() as dsn` instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from exchange import store
from exchange.pgembed import EmbeddedPostgres
from gateway.testing import Exchange, running_exchange

# Test data need not survive a machine crash: skipping fsync makes commits cheap. Durability against a
# killed client or a terminated backend (what the tests check) does not depend on it.
EMBEDDED_TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}

FreshDatabase = Callable[..., Awaitable[str]]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False, help="also run tests marked soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


class _TestDatabases:
    """Creates uniquely named databases on the test server and drops them again."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._prefix = f"hogx_test_{os.getpid()}_{secrets.token_hex(3)}"
        self._count = 0

    async def create(self, *, migrated: bool) -> str:
        self._count += 1
        name = f"{self._prefix}_{self._count}"
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn = store.dsn_with_database(self.server_url, name)
        if migrated:
            conn = await asyncpg.connect(dsn)
            try:
                await store.migrate(conn)
            finally:
                await conn.close()
        return dsn

    @contextlib.asynccontextmanager
    async def fresh(self, *, migrated: bool = True) -> AsyncIterator[str]:
        """A brand-new database for a module-scoped fixture (`fresh_database_url` is per test), dropped
        after it."""
        dsn = await self.create(migrated=migrated)
        try:
            yield dsn
        finally:
            await self.drop(dsn)

    async def drop(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        conn = await asyncpg.connect(self.server_url)
        try:
            # FORCE ends sessions a test left open (a subprocess, a leaked pool) instead of failing.
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """DSN of a maintenance database on the server this run uses (DATABASE_URL or embedded)."""
    url = os.environ.get(store.DATABASE_URL_ENV, "").strip()
    if url:
        yield url
        return
    tmp = Path(tempfile.mkdtemp(prefix="hogx-test-pg-"))
    server = EmbeddedPostgres.start(tmp / "pgdata", settings=EMBEDDED_TEST_SETTINGS)
    try:
        yield server.dsn
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def _test_databases(postgres_server_url: str) -> _TestDatabases:
    return _TestDatabases(postgres_server_url)


@pytest_asyncio.fixture(scope="session")
async def database_url(_test_databases: _TestDatabases) -> AsyncIterator[str]:
    dsn = await _test_databases.create(migrated=True)
    yield dsn
    await _test_databases.drop(dsn)


@pytest_asyncio.fixture(scope="module")
async def ex(_test_databases: _TestDatabases) -> AsyncIterator[Exchange]:
    """The whole exchange on a real socket, shared by a module's tests; its clock ticks every 50 ms."""
    dsn = await _test_databases.create(migrated=True)
    try:
        async with running_exchange(dsn, clock_tick_s=0.05) as exchange:
            yield exchange
    finally:
        await _test_databases.drop(dsn)


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pg_pool = await store.create_pool(database_url, min_size=1, max_size=4)
    yield pg_pool
    await pg_pool.close()


@pytest_asyncio.fixture
async def fresh_database_url(_test_databases: _TestDatabases) -> AsyncIterator[FreshDatabase]:
    created: list[str] = []

    async def make(*, migrated: bool = True) -> str:
        dsn = await _test_databases.create(migrated=migrated)
        created.append(dsn)
        return dsn

    yield make
    for dsn in created:
        await _test_databases.drop(dsn)
