"""Payload schemas and constraints, per fact type."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from memstate_sql.errors import ValidationFailed
from memstate_sql.timeutil import as_ttl


class Constraint:
    """Per-type rules, enforced by the database.

    `singleton_key`: at most one fact of the type per value of this top-level
    payload key (a unique index; a commit with an existing value updates that
    fact). `immutable`: a fact of the type can be created and deleted but its
    content never changes (`update`, a re-commit of its id or of its singleton
    value raise `ConflictError`). `ttl` (memstate_sql): the default time to live of the type's facts
    (seconds or a `timedelta`); a commit's own `ttl=` / `expires_at=` wins over it.
    """

    __slots__ = ("immutable", "singleton_key", "ttl")

    def __init__(
        self, singleton_key: str | None = None, immutable: bool = False, *, ttl: float | timedelta | None = None
    ) -> None:
        if singleton_key is not None and (not isinstance(singleton_key, str) or not singleton_key):
            raise ValidationFailed("Constraint.singleton_key must be a non-empty string or None")
        try:
            self.ttl: timedelta | None = None if ttl is None else as_ttl(ttl)
        except (TypeError, ValueError) as exc:
            raise ValidationFailed(f"Constraint.ttl: {exc}") from None
        self.singleton_key = singleton_key
        self.immutable = bool(immutable)

    def __repr__(self) -> str:
        ttl = "" if self.ttl is None else f", ttl={self.ttl!r}"
        return f"Constraint(singleton_key={self.singleton_key!r}, immutable={self.immutable!r}{ttl})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Constraint)
            and other.singleton_key == self.singleton_key
            and other.immutable == self.immutable
            and other.ttl == self.ttl
        )

    def __hash__(self) -> int:
        return hash((self.singleton_key, self.immutable, self.ttl))


class SchemaRegistry:
    """Maps type names to pydantic models and validates payloads against them."""

    def __init__(self) -> None:
        self._schemas: dict[str, type[BaseModel]] = {}

    @property
    def schemas(self) -> dict[str, type[BaseModel]]:
        return dict(self._schemas)

    def register(self, typename: str, model: type[BaseModel]) -> None:
        if not isinstance(typename, str) or not typename:
            raise ValidationFailed("a type name must be a non-empty string")
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or model is BaseModel:
            raise ValidationFailed(f"the schema for {typename!r} must be a pydantic BaseModel subclass")
        self._schemas[typename] = model

    def get_type_by_model(self, model_class: type[BaseModel]) -> str | None:
        for typename, registered in self._schemas.items():
            if registered is model_class:
                return typename
        return None

    def validate(self, typename: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Validate `payload` against the type's model and return its JSON form.

        A type without a registered model passes through unchanged (memstate's rule).
        """
        model_cls = self._schemas.get(typename)
        if model_cls is None:
            return payload
        try:
            return model_cls.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            raise ValidationFailed(str(exc)) from exc
