"""Local accounts: Argon2id password hashes (argon2-cffi), lookup, creation."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from gateway.storage.database import session
from gateway.storage.models import User

_hasher = PasswordHasher()  # Argon2id with the library's RFC 9106 low-memory defaults
# Verified against when the email is unknown, so both paths cost the same.
_DUMMY_HASH = _hasher.hash("not a password")

MIN_PASSWORD = 10


class UserError(ValueError):
    """A user could not be created or changed; the message is safe to show."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def validate(email: str, password: str) -> str:
    email = normalise_email(email)
    if "@" not in email or len(email) > 320 or email.startswith("@") or email.endswith("@"):
        raise UserError("Enter a valid email address.")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"Use a password of at least {MIN_PASSWORD} characters.")
    return email


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create(engine: Engine, email: str, password: str, plan: str = "free") -> User:
    email = validate(email, password)
    user = User(email=email, password_hash=_hasher.hash(password), plan=plan)
    try:
        with session(engine) as s:
            s.add(user)
            s.commit()
            s.refresh(user)
    except IntegrityError:
        raise UserError("An account with this email already exists.") from None
    return user


def by_email(engine: Engine, email: str) -> User | None:
    with session(engine) as s:
        return s.exec(select(User).where(User.email == normalise_email(email))).first()


def by_id(engine: Engine, user_id: int) -> User | None:
    with session(engine) as s:
        return s.get(User, user_id)


def authenticate(engine: Engine, email: str, password: str) -> User | None:
    user = by_email(engine, email)
    try:
        if user is None:
            _hasher.verify(_DUMMY_HASH, password)
            return None
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return user
