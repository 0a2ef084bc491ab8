"""exchange.pgembed: a real embedded server, started even when DATABASE_URL points elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from exchange.pgembed import HOST, EmbeddedPostgres, EmbeddedPostgresError

from .conftest import EMBEDDED_TEST_SETTINGS

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg_home() -> Iterator[Path]:
    """A temporary directory for a data directory, with any server left running in it shut down.

    Made with mkdtemp rather than tmp_path: pytest's root-only 0700 base would need opening up
    for the unprivileged server user when the tests run as root.
    """
    home = Path(tempfile.mkdtemp(prefix="hogx-test-pgembed-"))
    home.chmod(0o755)
    yield home
    for pid_file in home.glob("*/postmaster.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)  # immediate shutdown
    shutil.rmtree(home, ignore_errors=True)


async def _query(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


async def test_start_query_stop_and_restart_keeps_data(pg_home: Path) -> None:
    data_dir = pg_home / "pgdata"
    server = EmbeddedPostgres.start(data_dir, settings=EMBEDDED_TEST_SETTINGS)
    assert server.owns_server and server.is_running()
    assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    assert await _query(server.dsn, "SELECT current_setting('server_version_num')::int / 10000") >= 16
    conn = await asyncpg.connect(server.dsn)
    await conn.execute("CREATE TABLE kept (v bigint); INSERT INTO kept VALUES (42), (43)")
    await conn.close()

    server.stop()
    server.stop()  # a second stop is a no-op
    assert not server.is_running()
    assert not _accepts_connections(server.port)

    again = EmbeddedPostgres.start(data_dir)
    try:
        assert await _query(again.dsn, "SELECT sum(v) FROM kept") == 85
    finally:
        again.stop()


async def test_explicit_port_is_used(pg_home: Path) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    with EmbeddedPostgres.start(pg_home / "pgdata", port=port, settings=EMBEDDED_TEST_SETTINGS) as server:
        assert server.port == port
        assert await _query(server.dsn, "SELECT current_setting('port')") == str(port)
    assert not _accepts_connections(port)


def test_taken_explicit_port_fails_with_the_server_log(pg_home: Path) -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedPostgresError, match="already in use"):
            EmbeddedPostgres.start(pg_home / "pgdata", port=port)


def test_second_start_shares_the_server_without_owning_it(pg_home: Path) -> None:
    first = EmbeddedPostgres.start(pg_home / "pgdata", settings=EMBEDDED_TEST_SETTINGS)
    try:
        second = EmbeddedPostgres.start(pg_home / "pgdata")
        assert (second.port, second.owns_server) == (first.port, False)
        second.stop()
        assert first.is_running()
    finally:
        first.stop()
    assert not first.is_running()


def test_refuses_a_directory_that_is_not_a_data_directory(pg_home: Path) -> None:
    (pg_home / "pgdata").mkdir()
    (pg_home / "pgdata" / "precious.txt").write_text("not ours")
    with pytest.raises(EmbeddedPostgresError, match="neither empty nor"):
        EmbeddedPostgres.start(pg_home / "pgdata")
    assert (pg_home / "pgdata" / "precious.txt").read_text() == "not ours"


_CHILD = """
import json, sys, time
from exchange.pgembed import EmbeddedPostgres
server = EmbeddedPostgres.start(sys.argv[1])
print(json.dumps({"port": server.port}), flush=True)
if sys.argv[2] == "linger":
    time.sleep(60)
"""


def _start_child(data_dir: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), mode], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    assert child.stdout is not None
    port = json.loads(child.stdout.readline())["port"]
    return child, port


def test_server_stops_when_its_process_exits(pg_home: Path) -> None:
    child, port = _start_child(pg_home / "pgdata", "exit")
    assert child.wait(timeout=60) == 0
    assert not _accepts_connections(port)
    assert not (pg_home / "pgdata" / "postmaster.pid").exists()


async def test_server_of_a_killed_process_is_adopted_and_stopped(pg_home: Path) -> None:
    child, port = _start_child(pg_home / "pgdata", "linger")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert _accepts_connections(port)  # SIGKILL skips atexit: the server is orphaned

    adopted = EmbeddedPostgres.start(pg_home / "pgdata")
    assert (adopted.port, adopted.owns_server) == (port, True)
    assert await _query(adopted.dsn, "SELECT 1") == 1
    adopted.stop()
    assert not _accepts_connections(port)


_AS_USER = """
import asyncio, json, os, sys
import asyncpg
from exchange.pgembed import EmbeddedPostgres
server = EmbeddedPostgres.start(sys.argv[1])
async def main():
    conn = await asyncpg.connect(server.dsn)
    print(json.dumps({"uid": os.getuid(), "answer": await conn.fetchval("SELECT 6 * 7")}))
    await conn.close()
asyncio.run(main())
server.stop()
"""


def _can_execute_as(user: pwd.struct_passwd, program: Path) -> bool:
    probe = subprocess.run(["test", "-x", str(program)], user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return probe.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_runs_as_a_normal_user(pg_home: Path) -> None:
    # The path a newcomer's laptop takes: no root, so no user switching; the server runs as the caller.
    nobody = pwd.getpwnam("nobody")
    if not _can_execute_as(nobody, Path(sys.executable).resolve()):
        pytest.skip(f"{sys.executable} is not reachable for user nobody")
    os.chown(pg_home, nobody.pw_uid, nobody.pw_gid)
    result = subprocess.run(
        [sys.executable, "-c", _AS_USER, str(pg_home / "pgdata")],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], env={**os.environ, "HOME": str(pg_home)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"uid": nobody.pw_uid, "answer": 42}
    assert (pg_home / "pgdata" / "PG_VERSION").stat().st_uid == nobody.pw_uid
