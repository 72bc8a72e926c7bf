"""Storage URLs: the SQLite file of a run directory escaped into a URL, a driver for ``postgresql://`` and
``mysql://``, passwords hidden, in-memory SQLite refused; every problem one :class:`ConfigError` naming the URL.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import quote

import sqlalchemy.exc
from sqlalchemy.engine import URL, make_url

from automl_kd.errors import ConfigError

DEFAULT_DB = "study.db"

#: the driver that a URL without one (``postgresql://``) gets, first installed one wins
DRIVERS = {"postgresql": ("psycopg2", "psycopg", "pg8000"), "mysql": ("pymysql", "MySQLdb", "mysqlconnector")}
_DRIVER_MODULES = {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000", "pymysql": "pymysql"}
_DRIVER_MODULES.update(MySQLdb="MySQLdb", mysqlconnector="mysql.connector")
_INSTALL = {"postgresql": "pip install psycopg2-binary", "mysql": "pip install pymysql"}


def sqlite_url(path: Path) -> str:
    """The SQLite URL of ``path``, escaped: ``#``, ``?`` and ``%`` in a folder name stay part of the path."""
    return "sqlite:///" + quote(str(path.resolve()), safe="/")


def default_url(run_dir: Path) -> str:
    return sqlite_url(run_dir / DEFAULT_DB)


def display_url(url: str | None) -> str:
    """``url`` as it can be shown: the password replaced by ``***``."""
    if url is None:
        return "sqlite (run directory)"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL (a journal path)
        return url


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def rdb_url(url: str, *, create: bool = True) -> URL:
    """A parsed, checked database URL: a driver that is installed, a SQLite file (never in memory) that exists
    when reading; every problem a :class:`ConfigError` naming the URL."""
    shown = display_url(url)
    try:
        u = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError) as exc:
        raise ConfigError(f"storage URL {shown!r} is not valid: {exc}") from None
    backend, _, driver = u.drivername.partition("+")
    if backend == "sqlite":
        query = " ".join(f"{k}={v}" for k, v in u.query.items())
        if u.database in (None, "", ":memory:") or "mode=memory" in query:
            raise ConfigError(
                f"storage URL {shown!r} is an in-memory SQLite database: nothing would be kept and no other "
                "process could see it; use sqlite:///PATH.db, or leave --storage out for study.db in the run "
                "directory"
            )
        path = Path(u.database).expanduser()
        if not create and not path.is_file():
            raise ConfigError(f"no study database: {path.absolute()} does not exist")
        return u
    if backend in DRIVERS:
        if not driver:
            found = next((d for d in DRIVERS[backend] if _installed(_DRIVER_MODULES[d])), None)
            if found is None:
                raise ConfigError(
                    f"storage URL {shown!r} needs a database driver, and none is installed: {_INSTALL[backend]}"
                )
            return u.set(drivername=f"{backend}+{found}")
        return u
    try:
        u.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(
            f"storage URL {shown!r}: unknown database {backend!r}; use sqlite:///PATH.db, postgresql://..., "
            "mysql://..., or journal:PATH"
        ) from None
    except ImportError as exc:
        raise ConfigError(f"storage URL {shown!r} needs a database driver: {exc}") from None
    return u
