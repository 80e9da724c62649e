"""The one store setting: `sqlite:///DIR` (single node, the default) or `postgresql://USER@HOST:PORT/DB`.

A PostgreSQL password is never part of the URL (it would show in `ps`, logs and config files): it
comes from `[bridge] store_password_env` / `store_password_file`, or from libpq's own ~/.pgpass. libpq's
`sslpassword` (the passphrase of an encrypted `sslkey`) can only be given in the URL: the URL prints with its
value masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final
from urllib.parse import unquote

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cloud_bridge.errors import ConfigError
from cloud_bridge.secrets import Secret


class StoreKind(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


# URL parameters that hold a secret libpq takes nowhere else; their values are never printed.
_MASKED_PARAMS: Final = frozenset({"sslpassword"})
_SCHEMES = {"sqlite://": StoreKind.SQLITE, "postgresql://": StoreKind.POSTGRESQL, "postgres://": StoreKind.POSTGRESQL}


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """Where the bridge keeps its shared state; prints without any password."""

    kind: StoreKind
    location: str  # SQLite: the data directory; PostgreSQL: the URL (no password)
    password: Secret | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str, *, password: Secret | None = None) -> StoreUrl:
        """ConfigError on an unknown scheme, a malformed PostgreSQL URL or a password inside the URL."""
        found = [(prefix, kind) for prefix, kind in _SCHEMES.items() if text.startswith(prefix)]
        if not found:
            # Not quoted: a password pasted here instead of into store_password_* must not reach a log.
            raise ConfigError("store must be sqlite:///DIR or postgresql://USER@HOST:PORT/DB (the value is not shown)")
        [(prefix, kind)] = found
        if kind is StoreKind.SQLITE:
            directory = text.removeprefix(prefix)
            if not directory:
                raise ConfigError("store sqlite:// needs a directory, e.g. sqlite:///var/lib/cloud-bridge")
            if password is not None:
                raise ConfigError("store_password_* is for a postgresql:// store")
            return cls(kind, directory)
        try:
            params = conninfo_to_dict(text)
        except ProgrammingError:
            # The driver's message may quote the URL, password included: say only what is wrong.
            raise ConfigError("store: not a valid postgresql:// URL") from None
        if "password" in params:
            raise ConfigError("store: no password in the URL; give [bridge] store_password_env or store_password_file")
        return cls(StoreKind.POSTGRESQL, text, password)

    @classmethod
    def sqlite(cls, directory: Path) -> StoreUrl:
        return cls(StoreKind.SQLITE, str(directory))

    @property
    def directory(self) -> Path:
        """The data directory of a SQLite store."""
        if self.kind is not StoreKind.SQLITE:
            raise ValueError("only a sqlite store has a directory")
        return Path(self.location)

    def conninfo(self, application_name: str = "cloud-bridge") -> str:
        """The libpq connection string, with the password when one was given (never log it)."""
        if self.kind is not StoreKind.POSTGRESQL:
            raise ValueError("only a postgresql store has a connection string")
        extra = {"application_name": application_name}
        if self.password is not None:
            extra["password"] = self.password.reveal()
        return make_conninfo(self.location, **extra)

    @property
    def shared(self) -> bool:
        """True when several bridge nodes may share this store."""
        return self.kind is StoreKind.POSTGRESQL

    def __str__(self) -> str:
        """The store as logs and messages show it: `sslpassword`'s value masked (the start line printed it whole)."""
        if self.kind is StoreKind.SQLITE:
            return f"sqlite://{self.location}"
        head, sep, query = self.location.partition("?")
        pairs = [(pair, unquote(pair.partition("=")[0]).strip().lower()) for pair in query.split("&")] if sep else []
        return head + sep + "&".join(f"{key}=***" if key in _MASKED_PARAMS else pair for pair, key in pairs)
