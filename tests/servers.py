"""Real servers for the tests of studies on many machines, started by the tests themselves on 127.0.0.1 and stopped
at the end of the session: a PostgreSQL cluster of its own (``initdb`` in a temporary folder, as the ``postgres``
user when the tests run as root, since PostgreSQL refuses to run as root) and an ``mlflow server`` backed by it,
with an artifact store whose artifacts it proxies (``--artifacts-destination``).

``KDLAB_TEST_POSTGRES_URL`` (``postgresql://USER@HOST:PORT/DB`` of a role that may create databases) makes the
tests use a running server instead. Without either, the tests that need PostgreSQL skip and say why. The
benchmarks (``benchmarks/storage.py``) use the same helpers.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ENV_URL = "KDLAB_TEST_POSTGRES_URL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Where PostgreSQL's server programs are: Debian's ``/usr/lib/postgresql/<version>/bin`` (the newest), else
    the folder of ``pg_ctl`` on the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    ctl = shutil.which("pg_ctl")
    return Path(ctl).parent if ctl and (Path(ctl).parent / "initdb").exists() else None


class Postgres:
    """A PostgreSQL server for the tests; :meth:`database` makes a new, empty database and returns its URL."""

    def __init__(self, admin_url: str, stop=None):
        self.admin_url = admin_url  # postgresql+psycopg://USER@HOST:PORT/postgres
        self._stop = stop

    @classmethod
    def start(cls) -> Postgres:
        """``initdb`` and ``pg_ctl start`` in a new temporary folder, listening on 127.0.0.1 only (trust
        authentication: nothing but this machine can reach it). Raises ``RuntimeError`` with the reason when no
        server can be started here."""
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install -y postgresql), and "
                               f"{ENV_URL} names no running server")
        as_user: list[str] = []
        folder = Path(tempfile.mkdtemp(prefix="kdlab-pg-"))
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the `postgres` user
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as") from None
            os.chown(folder, pw.pw_uid, pw.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        data, port = folder / "data", free_port()

        def run(*cmd: str, timeout: float = 120) -> None:
            done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                raise RuntimeError(f"{Path(cmd[0]).name} failed: {(done.stderr or done.stdout).strip()[-800:]}")

        run(str(bindir / "initdb"), "-D", str(data), "-U", "kdlab", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "120",
            "-o", options, "start", timeout=180)

        def stop() -> None:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
            shutil.rmtree(folder, ignore_errors=True)

        return cls(f"postgresql+psycopg://kdlab@127.0.0.1:{port}/postgres", stop)

    @classmethod
    def from_env(cls) -> Postgres | None:
        url = os.environ.get(ENV_URL)
        if not url:
            return None
        from kdlab.study.storage import driver_url

        return cls(driver_url(url))

    def database(self, prefix: str = "kdlab") -> str:
        """A new empty database; its URL (``postgresql+psycopg://...``)."""
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = sqlalchemy.create_engine(self.admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a PostgreSQL backend store and proxied artifacts."""

    def __init__(self, backend_url: str, artifacts: Path, port: int | None = None):
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts
        self.log = artifacts.parent / f"mlflow-server-{self.port}.log"
        artifacts.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", backend_url, "--artifacts-destination", artifacts.as_uri()],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})

    def wait(self, timeout: float = 240) -> MlflowServer:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=20)


# --- fixtures (imported by conftest.py) -------------------------------------------------------------------------


def _need_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the PostgreSQL driver is not installed: pip install 'kdlab[postgres]'")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session (started here, stopped at the end); skips, saying why, where
    none can be started."""
    _need_psycopg()
    server = Postgres.from_env()
    if server is None:
        try:
            server = Postgres.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"no PostgreSQL server could be started: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> str:
    """A new, empty PostgreSQL database for one test (an Optuna storage URL)."""
    return postgres_server.database("optuna")


@pytest.fixture(scope="session")
def mlflow_server(postgres_server: Postgres, tmp_path_factory: pytest.TempPathFactory):
    """An ``mlflow server`` backed by PostgreSQL with proxied artifacts, for this test session."""
    server = MlflowServer(postgres_server.database("mlflow"), tmp_path_factory.mktemp("mlflow-artifacts"))
    try:
        server.wait()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()
