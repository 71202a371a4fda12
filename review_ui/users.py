"""Review-UI accounts: ``STORE/.review/users.json``, passwords hashed with argon2id (argon2-cffi).

Roles, each allowed what the ones before it are:

    viewer     looks at the queue, changes, runs and scene histories
    reviewer   decides (approve, reject, relabel, adjust, regenerate)
    operator   starts updates and rolls scenes back

    users = UserStore(store)
    users.add("ana", "reviewer", password)
    users.verify("ana", password)   # -> User or None

The file is written whole through a temporary file and an atomic rename (mode 0600) under an flock, so
concurrent ``idu users add`` calls do not lose each other's accounts. Passwords are never stored, logged or
echoed; only their argon2 hashes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconstruction.errors import IDUError

ROLES = ("viewer", "reviewer", "operator")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8


class UserError(IDUError):
    """An account that cannot be created or changed (bad name, role or password; unknown user)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role: str) -> bool:
        """Whether this user has ``role``'s rights (roles are ordered viewer < reviewer < operator)."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()  # argon2id, the library's (RFC 9106 low-memory) parameters


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random string, verified against for unknown names (as slow as a real check)."""
    return _hasher().hash(secrets.token_hex(16))


class UserStore:
    def __init__(self, store: str | os.PathLike):
        self.path = Path(store) / ".review" / "users.json"

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())["users"]
        except (ValueError, KeyError) as e:
            raise UserError(f"{self.path}: not a users file ({e})") from None

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / ".users.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            users = self._read()
            yield users
            tmp = self.path.with_name(f".users.{os.getpid()}.tmp")
            fd_tmp = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd_tmp, "w") as f:
                json.dump({"users": users}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def add(self, name: str, role: str, password: str, replace: bool = False) -> User:
        """Create (or with ``replace``, change) an account."""
        if not NAME_RE.fullmatch(name or ""):
            raise UserError(f"{name!r}: a user name is 1-64 letters, digits or _ . @ - (no spaces)")
        if role not in ROLES:
            raise UserError(f"{role!r}: the role is one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise UserError(f"the password of {name} is shorter than {MIN_PASSWORD} characters")
        digest = _hasher().hash(password)
        with self._locked() as users:
            if name in users and not replace:
                raise UserError(f"{name}: the user exists (use --replace to change the role or password)")
            users[name] = {"role": role, "hash": digest}
        return User(name, role)

    def remove(self, name: str) -> None:
        with self._locked() as users:
            if users.pop(name, None) is None:
                raise UserError(f"{name}: no such user")

    def list(self) -> list[User]:
        return [User(n, u["role"]) for n, u in sorted(self._read().items())]

    def get(self, name: str) -> User | None:
        u = self._read().get(name)
        return User(name, u["role"]) if u else None

    def verify(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None (unknown users cost a hash too: no timing hint)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        u = self._read().get(name)
        ph = _hasher()
        try:
            if u is None:
                ph.verify(_dummy_hash(), password)
                return None
            ph.verify(u["hash"], password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name, u["role"])


__all__ = ["ROLES", "User", "UserError", "UserStore"]
