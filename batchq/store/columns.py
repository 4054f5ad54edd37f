"""The column types and the declarative base every table shares."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase

from batchq.states import values

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite stores BIGINT primary keys only as INTEGER aliases of the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


E = TypeVar("E", bound=StrEnum)


class EnumText(TypeDecorator[E], Generic[E]):
    """A state stored as its plain string (readable in SQL, checked by a constraint) and read
    back as its enum member."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int):
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def result_processor(self, dialect: Dialect, coltype: object
                         ) -> Callable[[Any], E | None]:
        # One plain lookup per value: results read a million of these, and SQLAlchemy's
        # process_result_value hook costs two calls more, plus the enum's own lookup.
        members: dict[str, E] = {member.value: member for member in self.enum}
        enum = self.enum

        def process(value: Any) -> E | None:
            return None if value is None else members.get(value) or enum(value)
        return process


def one_of(states: type[StrEnum]) -> str:
    return f"status IN {values(states)}"


class UtcDateTime(TypeDecorator[datetime]):
    """A moment, stored with its zone and always read back in UTC. SQLite keeps no zone and
    hands back naive values, which must never meet the aware ones batchq computes with (in a
    comparison, Python refuses; the ORM makes such comparisons when it syncs an UPDATE)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class SafeText(TypeDecorator[str]):
    """Text that may hold U+0000, which PostgreSQL's text type refuses.

    A value containing NUL, or starting with the marker itself, is stored as the marker
    followed by its JSON (which escapes both); any other value is stored as it is, so what
    people read in SQL stays readable. Reading reverses it exactly.
    """

    impl = Text
    cache_ok = True
    MARK = "\x01"

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is not None and ("\x00" in value or value.startswith(self.MARK)):
            return self.MARK + json.dumps(value)
        return value

    def result_processor(self, dialect: Dialect, coltype: object
                         ) -> Callable[[str | None], str | None]:
        mark = self.MARK  # one call per value, as EnumText's

        def process(value: str | None) -> str | None:
            if value is not None and value.startswith(mark):
                text: str = json.loads(value[1:])
                return text
            return value
        return process


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
