"""The MLflow tracking store and the Optuna storage, checked before any work and opened safely.

:func:`check_tracking_uri` and :func:`check_storage_url` take a second or less (a file check, a driver import, a
connection with a timeout of :data:`CONNECT_TIMEOUT_S` seconds): every problem becomes one :class:`StoreError`
naming the URI (its password masked), what is wrong and what to do, long before a run has anything to lose. A store
that would silently discard runs (``sqlite://``, in memory) is refused. :func:`opening` wraps the first use of a
store: several processes that create the same SQLite file at once take turns (a file lock), and what the libraries
raise while opening it is explained in the same way.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from kdlab import paths
from kdlab.errors import KdlabError, shorten
from kdlab.files import file_lock

#: seconds to wait for a database or tracking server to accept a connection at start
CONNECT_TIMEOUT_S = 5.0

#: SQLAlchemy schemes (a ``+driver`` suffix is allowed) and the package that provides the default driver
_DATABASES = {"postgresql": "the postgres extra: pip install 'kdlab[postgres]'",
              "postgres": "the postgres extra: pip install 'kdlab[postgres]'",
              "mysql": "a MySQL driver: pip install mysqlclient (or use mysql+pymysql:// with pip install pymysql)",
              "mssql": "an SQL Server driver: pip install pyodbc"}
_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433, "http": 80, "https": 443}
#: tracking URIs kdlab passes to MLflow unchecked (hosted services that need their own credentials)
_HOSTED = ("databricks", "databricks-uc", "uc")


class StoreError(KdlabError):
    """A tracking store or Optuna storage that cannot be used: the URI, what is wrong, what to do."""


def mask(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part replaced by ``***``."""
    return re.sub(r"^([A-Za-z][\w+.\-]*://[^/:@]*):[^/@]*@", r"\1:***@", uri)


def _scheme(uri: str) -> str:
    m = re.match(r"^([A-Za-z][\w+.\-]*):", uri)
    return m.group(1).lower() if m else ""


# -- checks ------------------------------------------------------------------------------------------------------


def check_tracking_uri(uri: str, what: str = "MLflow tracking store") -> None:
    """Raise :class:`StoreError` unless ``uri`` names an MLflow tracking store kdlab can write to now."""
    scheme = _scheme(uri)
    base = scheme.split("+", 1)[0]
    if not uri.strip():
        raise StoreError(f"{what}: the tracking URI is empty; give sqlite:///PATH/mlflow.db or http://HOST:PORT")
    if base == "sqlite":
        _check_sqlite(uri, what)
    elif base in _DATABASES:
        _check_database(uri, what)
    elif base in ("http", "https"):
        _check_server(uri, what)
    elif base in _HOSTED:
        return
    elif base == "file" or not scheme or len(scheme) == 1:  # a plain path, or C:\ on Windows
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return
        path = uri.removeprefix("file://") if base == "file" else uri
        raise StoreError(f"{what} {mask(uri)!r} is a folder path, not a tracking URI: MLflow 3 keeps runs in a "
                         f"database. Use sqlite:///{Path(path).expanduser().resolve() / 'mlflow.db'} (created if "
                         "missing) or an MLflow server (http://HOST:PORT)")
    else:
        raise StoreError(f"{what} {mask(uri)!r}: unknown scheme {scheme + '://'!r}. kdlab tracks to "
                         "sqlite:///PATH, postgresql://, mysql://, mssql://, http(s)://HOST:PORT or databricks")


def check_storage_url(url: str) -> None:
    """Raise :class:`StoreError` unless ``url`` names an Optuna storage kdlab can write to now (``journal:PATH``, a
    plain path to a journal file, or an RDB URL)."""
    what = "Optuna storage"
    scheme = _scheme(url)
    base = scheme.split("+", 1)[0]
    if url.startswith("journal:") or "://" not in url:
        _check_writable_file(Path(url.removeprefix("journal:")).expanduser(), url, what, "journal file")
    elif base == "sqlite":
        _check_sqlite(url, what)
    elif base in _DATABASES:
        _check_database(url, what)
    else:
        raise StoreError(f"{what} {mask(url)!r}: unknown scheme {scheme + '://'!r}. Use journal:PATH (the default, "
                         "safe for several local workers), sqlite:///PATH, postgresql:// or mysql://")


def check_home() -> None:
    """Raise :class:`StoreError` unless ``KDLAB_HOME`` (and the cache folder) can be created and written."""
    home = paths.home()
    _writable_dir(home, f"KDLAB_HOME={home}", "point KDLAB_HOME at a writable folder")
    cache = paths.cache_base()
    if not cache.is_relative_to(home):
        _writable_dir(cache, f"the cache folder {cache}", "point KDLAB_CACHE_DIR at a writable folder")


def _writable_dir(path: Path, label: str, fix: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"{label} is a file, not a folder: {fix}") from None
    except OSError as exc:
        raise StoreError(f"{label} cannot be created ({exc.strerror}): {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StoreError(f"{label} is not writable: {fix}")


def _sqlite_path(uri: str) -> Path | None:
    """The file of an ``sqlite:///PATH`` URI, or ``None`` for an in-memory database."""
    rest = uri.split(":", 1)[1]
    rest = rest.split("?", 1)[0]
    if not rest.startswith("///"):
        return None  # sqlite:// or sqlite:/x: SQLAlchemy opens an in-memory database
    path = rest[3:]
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        return None
    return Path(path).expanduser()


def _check_sqlite(uri: str, what: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        raise StoreError(f"{what} {uri!r} is an in-memory database: everything recorded would be lost when the "
                         "process ends. Give a file: sqlite:///PATH/mlflow.db")
    _check_writable_file(path, uri, what, "database file")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise StoreError(f"{what} {uri!r}: {path} is not an SQLite database (it holds other data); move it "
                             "away or give another file")


def _check_writable_file(path: Path, uri: str, what: str, kind: str) -> None:
    where = f"{what} {mask(uri)!r}"
    if str(path) in ("", ".") or path.is_dir():
        raise StoreError(f"{where}: {path} is a folder; give a {kind} inside it, e.g. {path / 'mlflow.db'}"
                         if kind == "database file" else f"{where}: {path} is a folder; give a {kind} path")
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise StoreError(f"{where}: {ancestor} is a file, so {path} cannot be created; give another path")
            if ancestor != parent and not os.access(ancestor, os.W_OK | os.X_OK):
                raise StoreError(f"{where}: the folder {parent} does not exist and cannot be created in "
                                 f"{ancestor} (not writable); create it or give another path")
            break
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{where}: the folder {parent} is not writable (the {kind} and its journal live there); "
                         "give a writable path")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{where}: {path} is read-only; make it writable (chmod u+w) or give another path")


def _check_database(uri: str, what: str) -> None:
    where = f"{what} {mask(uri)!r}"
    base = _scheme(uri).split("+", 1)[0]
    try:
        from sqlalchemy.engine.url import make_url

        url = make_url(uri)
        dialect = url.get_dialect()
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's reasons for a URL it cannot parse
        raise StoreError(f"{where}: not a database URL ({shorten(str(exc))})") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise StoreError(f"{where} needs the database driver {getattr(exc, 'name', None) or dialect.driver!r}, "
                         f"which is not installed: install {_DATABASES[base]}") from None
    if url.host:
        _connect(url.host, url.port or _DEFAULT_PORTS[base], where, "database")


def _check_server(uri: str, what: str) -> None:
    where = f"{what} {mask(uri)!r}"
    parts = urlsplit(uri)
    if not parts.hostname:
        raise StoreError(f"{where}: no host in the URI; expected http://HOST:PORT")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
    except ValueError:
        raise StoreError(f"{where}: the port is not a number") from None
    _connect(parts.hostname, port, where, "MLflow")


def _connect(host: str, port: int, where: str, kind: str) -> None:
    """A TCP connection to ``host:port`` within :data:`CONNECT_TIMEOUT_S`; ``kind``: "database" or "MLflow"."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.gaierror:
        raise StoreError(f"{where}: the host {host!r} is unknown (DNS); check the URI") from None
    except TimeoutError:
        raise StoreError(f"{where}: {host}:{port} did not answer within {CONNECT_TIMEOUT_S:g} s; check the host, "
                         "the port and the network (a firewall?)") from None
    except OSError as exc:
        start = (" (start one, e.g. `mlflow server --host 127.0.0.1 --port "
                 f"{port} --backend-store-uri sqlite:///mlflow.db`)") if kind == "MLflow" else ""
        raise StoreError(f"{where}: no {kind} server answers at {host}:{port} ({exc.strerror or exc}){start}; or give "
                         "another URI") from None


# -- opening -----------------------------------------------------------------------------------------------------


@contextmanager
def opening(uri: str, what: str = "MLflow tracking store") -> Iterator[None]:
    """The first use of a store: under a file lock beside an SQLite file (so that processes that start together
    do not race to create its tables), with whatever the libraries raise explained as a :class:`StoreError`."""
    path = _sqlite_path(uri) if _scheme(uri) == "sqlite" else None
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(path.with_name(path.name + ".lock")):
                yield
        else:
            yield
    except KdlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever MLflow, Optuna or SQLAlchemy raised, the store is the culprit
        raise explain(uri, exc, what) from exc


def explain(uri: str, exc: BaseException, what: str = "MLflow tracking store") -> StoreError:
    """A :class:`StoreError` for ``exc``, raised while using the store ``uri``: what it means and what to do."""
    text = str(exc)
    low = text.lower()
    where = f"{what} {mask(uri)!r}"
    if "already exists" in low and ("table" in low or "index" in low):
        fix = "its creation was cut short (a crash, a full disk, a file-size limit): move the file away and run again"
    elif "readonly database" in low or "read-only" in low:
        fix = "it is read-only: make the file and its folder writable, or give another store"
    elif "unable to open database file" in low:
        fix = "the database file cannot be opened or created: check the folder exists and is writable"
    elif "malformed" in low or "file is not a database" in low or "disk i/o error" in low:
        fix = "the database file is damaged: move it away (or restore a copy) and run again"
    elif "database is locked" in low:
        fix = "another process keeps the database locked: wait for it, or use a server store for many processes"
    elif "can't locate revision" in low or "alembic" in low:
        fix = "it was written by another MLflow version: upgrade MLflow (`mlflow db upgrade URI`) or use another store"
    elif any(s in low for s in ("connection refused", "max retries exceeded", "failed to establish", "timed out")):
        fix = "the server stopped answering: check that it runs, and the network"
    elif "maintenance mode" in low:
        fix = "a folder is not a tracking URI in MLflow 3: use sqlite:///PATH/mlflow.db"
    else:
        fix = "run again with --debug for the traceback"
    return StoreError(f"{where}: {type(exc).__name__}: {shorten(text.splitlines()[0] if text else '', 300)} — {fix}")
