"""The local PostgreSQL cluster: Debian's server binaries on a project-local data directory.

Authenticated as in production: TCP connections need a SCRAM password; only the bootstrap
superuser may use the unix socket (in the stack's 0700 directory) without one, and only the stack
itself does. The DSN's user (`carebus`) owns the database and runs the migrations; every service
logs in as its own role, `carebus_<service>`, a member of the group role migration 0011 grants
(`carebus_svc_<service>`). The passwords are generated once and kept in the state directory
(`carebus.runtime.config.local_password_file`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from carebus.runtime.config import Settings, local_password_file
from carebus_dev.stack.kafka import port_open
from carebus_dev.stack.process import StackError, cmdline, is_alive, tail

POSTGRES_USER = "postgres"
# The cluster's bootstrap superuser: creates the owner, the database and the login roles over
# the unix socket; nothing else connects as it.
SUPERUSER = "postgres"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def server_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<major>/bin` that has a server binary."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]

    def major(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else 0

    return max(found, key=major) if found else None


def _running_as_root() -> bool:
    return os.geteuid() == 0


def install_server() -> Path:
    """Install Debian's PostgreSQL server if it is missing; return its bin directory."""
    bin_dir = server_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if not _running_as_root():
        raise StackError(
            "PostgreSQL server binaries were not found under /usr/lib/postgresql/*/bin and only "
            "root can install them: run `sudo apt-get install -y --no-install-recommends "
            "postgresql`, or run this command as root"
        )
    # Two test workers (or a test session and `carebus up`) may both find it missing; apt would
    # refuse the second on its own lock, so the first installs and the others wait for it.
    with Path("/var/lock/carebus-postgres-install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bin_dir = server_bin_dir()
        if bin_dir is not None:
            return bin_dir
        _apt_install_server()
    bin_dir = server_bin_dir()
    if bin_dir is None:
        raise StackError("the postgresql package installed, but no server binary was found")
    return bin_dir


def _apt_install_server() -> None:
    # The package would create and start a default cluster on port 5432 that carebus never
    # uses and `carebus down` would not stop; this documented switch tells it not to.
    conf = Path("/etc/postgresql-common/createcluster.conf")
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("create_main_cluster = false\n")
    env = {**os.environ, **APT_ENV}
    for argv in (
        ["apt-get", "update"],
        [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confold",
            "postgresql",
        ],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` failed (exit {result.returncode}):\n"
                + (result.stdout + result.stderr).strip()[-2000:]
            )


def login_role(service: str) -> str:
    """The role a service (or `operator`, the `carebus` command) of the local stack logs in as."""
    return f"carebus_{service}"


def group_role(service: str) -> str:
    """The NOLOGIN role migration 0011 grants a service's privileges to."""
    return f"carebus_svc_{service}"


def ensure_password(state_dir: Path, role: str) -> str:
    """The local stack's password for `role`, generated (0600, in a 0700 folder) the first time."""
    path = local_password_file(state_dir, role)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process of the stack
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def with_user(dsn: str, user: str) -> str:
    """`dsn` naming `user`, without a password (the process finds its own)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


@dataclass(frozen=True)
class Dsn:
    """The parts of a postgresql:// DSN the local cluster needs."""

    host: str
    port: int
    user: str
    database: str

    @classmethod
    def parse(cls, dsn: str) -> Dsn:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise StackError(f"CAREBUS_POSTGRES_DSN must start with postgresql://, not {dsn!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "carebus"),
            database=unquote(parts.path.lstrip("/")) or "carebus",
        )

    def conninfo(self, database: str | None = None) -> str:
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"dbname={database or self.database} connect_timeout=3"
        )

    def url(self, password: str) -> str:
        """postgresql://user:password@host:port/database"""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(password, safe='')}@"
            f"{self.host}:{self.port}/{quote(self.database, safe='')}"
        )


@dataclass
class PostgresCluster:
    """A cluster owned by this project's state directory, listening on 127.0.0.1 only.

    `durable=False` turns off fsync and friends: fine for the throwaway test cluster, never
    for `carebus up`, whose data a developer expects to survive a crash.
    """

    state_dir: Path
    dsn: Dsn
    durable: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, durable: bool = True) -> PostgresCluster:
        dsn = Dsn.parse(settings.postgres_dsn)
        if dsn.host not in ("127.0.0.1", "localhost"):
            raise StackError(
                "CAREBUS_POSTGRES_DSN must point at 127.0.0.1 for the local cluster, "
                f"not host {dsn.host!r}"
            )
        return cls(state_dir=settings.state_dir, dsn=dsn, durable=durable)

    # -- where things live --------------------------------------------------------------

    @property
    def location_file(self) -> Path:
        return self.state_dir / "postgres" / "location"

    @property
    def root(self) -> Path:
        """The directory that holds data/, the socket directory and the server log.

        Normally `<state_dir>/postgres`. As root, PostgreSQL runs as the `postgres` user, who
        cannot traverse a private checkout (CI clones into a 0700 `mktemp -d`); then the
        cluster lives under /var/tmp and the location file in the state dir says where.
        """
        if self.location_file.is_file():
            return Path(self.location_file.read_text().strip())
        return self.state_dir / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def owner(self) -> str:
        """The role that owns the database and runs the migrations: the DSN's user."""
        return self.dsn.user

    def owner_dsn(self) -> str:
        """The owner's DSN with its password (generated the first time it is asked for)."""
        return self.dsn.url(ensure_password(self.state_dir, self.owner))

    def _superuser_conninfo(self, database: str | None = None) -> str:
        return (
            f"host={self.socket_dir} port={self.dsn.port} user={SUPERUSER} "
            f"dbname={database or self.dsn.database} connect_timeout=3"
        )

    def _choose_root(self) -> Path:
        own = self.state_dir / "postgres"
        own.mkdir(parents=True, exist_ok=True)
        if _running_as_root() and not self._postgres_user_can_enter(own):
            digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
            chosen = Path("/var/tmp") / f"carebus-{digest}"  # noqa: S108 - checked below
            # /var/tmp is shared: refuse a directory someone else planted there.
            if chosen.exists() and chosen.stat().st_uid not in (0, self._server_uid()):
                raise StackError(f"{chosen} exists and belongs to another user; remove it")
            chosen.mkdir(mode=0o700, exist_ok=True)
        else:
            chosen = own
        self.location_file.write_text(f"{chosen}\n")
        return chosen

    @staticmethod
    def _server_uid() -> int:
        return pwd.getpwnam(POSTGRES_USER).pw_uid

    @staticmethod
    def _postgres_user_can_enter(path: Path) -> bool:
        result = subprocess.run(
            ["runuser", "-u", POSTGRES_USER, "--", "test", "-x", str(path)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    # -- commands -----------------------------------------------------------------------

    def _as_server_user(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root.
        if _running_as_root():
            return ["runuser", "-u", POSTGRES_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str], what: str) -> None:
        result = subprocess.run(
            self._as_server_user(argv),
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
            start_new_session=True,
        )
        if result.returncode != 0:
            detail = (result.stdout + result.stderr).strip()[-2000:]
            log = tail(self.log_path, 20)
            raise StackError(
                f"{what} failed (exit {result.returncode}):\n{detail}"
                + (f"\nlast lines of {self.log_path}:\n{log}" if log else "")
            )

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            pid = int(first)
        except (OSError, ValueError, IndexError):
            return None
        # A postmaster.pid left by a killed server names a pid that may since have been given
        # to another process; only a live postgres started on this data dir counts.
        if not is_alive(pid) or str(self.data_dir) not in " ".join(cmdline(pid)):
            return None
        return pid

    def is_running(self) -> bool:
        return self.postmaster_pid() is not None

    def healthy(self) -> bool:
        try:
            with psycopg.connect(self._superuser_conninfo()) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def start(self) -> bool:
        """Initialise (once) and start the cluster, create the database. True if started."""
        bin_dir = install_server()
        started = False
        if not self.is_running():
            if port_open("127.0.0.1", self.dsn.port):
                raise StackError(
                    f"port {self.dsn.port} on 127.0.0.1 is taken by another process, so the "
                    "local PostgreSQL cannot start; stop it or change CAREBUS_POSTGRES_DSN"
                )
            self._init(bin_dir)
            self._write_config()
            self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_path),
                    "-w",
                    "-t",
                    "60",
                    "-s",
                    "start",
                ],
                "starting PostgreSQL",
            )
            started = True
        self._ensure_database()
        return started

    def stop(self) -> bool:
        """Fast shutdown (rolls back open transactions). True if it was running."""
        if not self.is_running():
            return False
        bin_dir = server_bin_dir()
        if bin_dir is None:
            raise StackError("PostgreSQL is running but its pg_ctl binary is gone")
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                "60",
                "-s",
                "-m",
                "fast",
                "stop",
            ],
            "stopping PostgreSQL",
        )
        return True

    def remove(self) -> None:
        """Delete the cluster's files (the test stack's cleanup); the server must be stopped."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.location_file.unlink(missing_ok=True)

    def _init(self, bin_dir: Path) -> None:
        if self.location_file.is_file() and (self.data_dir / "PG_VERSION").exists():
            return
        root = self._choose_root()
        if (self.data_dir / "PG_VERSION").exists():
            return
        for path in (root, self.data_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        self.data_dir.chmod(0o700)
        if _running_as_root():
            for path in (root, self.data_dir, self.socket_dir):
                shutil.chown(path, POSTGRES_USER, POSTGRES_USER)
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ],
            "initdb",
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\n# carebus: settings written on every start\ninclude 'carebus.conf'\n")

    def _write_config(self) -> None:
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.dsn.port}",
            f"unix_socket_directories = '{self.socket_dir}'",
            "max_connections = 200",
            "shared_buffers = 128MB",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] '",
        ]
        if not self.durable:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        path = self.data_dir / "carebus.conf"
        path.write_text("\n".join(lines) + "\n")
        # Rewritten on every start, so a cluster made with `--auth=trust` is brought in line too.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# carebus: written on every start (carebus_dev/stack/postgres.py)\n"
            f"local all {SUPERUSER} trust\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        if _running_as_root():
            for written in (path, hba):
                shutil.chown(written, POSTGRES_USER, POSTGRES_USER)

    def superuser(self, database: str) -> psycopg.Connection[tuple[object, ...]]:
        """An autocommit connection as the bootstrap superuser over the socket (the stack and its
        tests only)."""
        try:
            return psycopg.connect(self._superuser_conninfo(database), autocommit=True)
        except psycopg.OperationalError as exc:
            raise StackError(
                f"cannot connect to the local PostgreSQL as its superuser {SUPERUSER!r} over "
                f"the socket in {self.socket_dir} ({type(exc).__name__}). A cluster made before "
                "per-service roles has another superuser: `carebus down`, remove "
                f"{self.root} and run `carebus up` again"
            ) from None

    def _ensure_database(self) -> None:
        """The owner (may create the group roles of migration 0011), its password, and the
        database it owns; never a superuser."""
        owner = sql.Identifier(self.owner)
        with self.superuser("postgres") as conn:
            if not _role_exists(conn, self.owner):
                conn.execute(sql.SQL("CREATE ROLE {}").format(owner))
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER CREATEROLE NOCREATEDB PASSWORD {}").format(
                    owner, _verifier(conn, self.owner, ensure_password(self.state_dir, self.owner))
                )
            )
            # The local owner is also the developer's and the tests' administrator (its DSN is
            # `carebus status`'s): it may see every session and end one, as before roles.
            conn.execute(sql.SQL("GRANT pg_read_all_stats, pg_signal_backend TO {}").format(owner))
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.dsn.database,)
            ).fetchone()
            name = sql.Identifier(self.dsn.database)
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, owner))
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, owner))

    def ensure_login_roles(self, services: Iterable[str]) -> list[str]:
        """A login role with its own password for each service, member of its group role only
        (run after the migrations, which create the group roles); returns the login roles."""
        made = []
        with self.superuser(self.dsn.database) as conn:
            for service in services:
                role = login_role(service)
                name = sql.Identifier(role)
                if not _role_exists(conn, role):
                    conn.execute(sql.SQL("CREATE ROLE {}").format(name))
                password = _verifier(conn, role, ensure_password(self.state_dir, role))
                conn.execute(
                    sql.SQL(
                        "ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD {}"
                    ).format(name, password)
                )
                conn.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(group_role(service)), name)
                )
                made.append(role)
        return made


def _role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def _verifier(
    conn: psycopg.Connection[tuple[object, ...]], role: str, password: str
) -> sql.Literal:
    """The SCRAM verifier of `password`, computed here: the password itself never reaches the
    server, so it cannot end up in its log."""
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    return sql.Literal(verifier.decode())
