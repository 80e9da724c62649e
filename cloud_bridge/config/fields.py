"""The building blocks of the config file's typed sections: the base model, shared key types, secrets.

Every table of the file is a `Section`: keys typed to the leaves, unknown keys refused, frozen, and
strict (a TOML string is not a number, a 1 is not true). A check that fails raises `invalid(...)`,
which pydantic collects with every other problem of the file, so the reader sees them all at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cloud_bridge.errors import ConfigError
from cloud_bridge.secrets import Secret, resolve_secret
from intent_contract.names import KINDS, is_name
from intent_contract.timefmt import parse_duration


def invalid(message: str) -> PydanticCustomError:
    """A config problem, reported as `message` at the key being checked.

    The message never quotes what was written there: a secret pasted into the wrong key would reach
    the reload's answer and the log. The location (`tenants.acme.policy.kinds.1`) says which entry.
    """
    return PydanticCustomError("config", "{message}", {"message": message})


class Section(BaseModel):
    """One table of the config file. Checks across its keys go in `problems`, all reported together."""

    # Inputs are kept out of pydantic's own error texts too: one could be a secret written by mistake.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, populate_by_name=False, hide_input_in_errors=True
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Self:
        found = self.checked(info.context or {})
        if found:
            raise invalid("; ".join(found))
        return self

    def checked(self, context: Mapping[str, Any]) -> list[str]:
        """`problems`, given the validation's context (`env`, and `node_secrets`: see `load_config`)."""
        return self.problems(context.get("env", {}))

    def problems(self, env: Mapping[str, str]) -> list[str]:
        """What is wrong across this table's keys (each key's own type is checked before); none by default."""
        return []

    def table(self) -> dict[str, Any]:
        """The keys as written in the file (only those given), for code that reads plain tables."""
        return self.model_dump(by_alias=True, exclude_unset=True)


def _name(value: str) -> str:
    if not is_name(value):
        raise invalid("not a valid name (letters, digits, '_', '.', '-'; at most 64)")
    return value


def _kind(value: str) -> str:
    if value not in KINDS:
        raise invalid(f"unknown kind (known: {', '.join(KINDS)})")
    return value


def _duration(value: object) -> object:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError:
            raise invalid("not a duration (e.g. 30s, 15m, 12h, 90d)") from None
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise invalid("must be a finite number")
    return value


Name = Annotated[str, AfterValidator(_name)]
Kind = Annotated[str, AfterValidator(_kind)]
Text = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
# A TCP port: getaddrinfo takes 70000 and connects to 70000 % 65536 (4464).
Port = Annotated[int, Field(gt=0, le=65535)]
Positive = Annotated[float, Field(gt=0), AfterValidator(_finite)]
# Seconds, written as a number or a duration: 30, "30s", "15m", "24h", "90d".
Duration = Annotated[float, BeforeValidator(_duration), AfterValidator(_finite)]


class SecretSection(Section):
    """A table with secret keys: each secret `x` is given as `x_env` or `x_file` and read when the file is.

    A plain `x` is refused. The values are kept as `Secret`s (never printed) and the environment they
    came from is not kept. Subclasses declare `x_env` and `x_file` as fields, list `x` in `SECRETS`,
    and say in `required` whether a secret must be there.
    """

    SECRETS: ClassVar[tuple[str, ...]] = ()
    # Only a node uses these (a provider's key, the dashboard's): the operators' commands do not read them.
    NODE_ONLY: ClassVar[bool] = True
    _secrets: dict[str, Secret] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_plain_secret(cls, data: object) -> object:
        if isinstance(data, Mapping):
            for name in cls.SECRETS:
                if name in data:
                    raise invalid(f"{name!r} must not be written in the config file; give {name}_env or {name}_file")
        return data

    def checked(self, context: Mapping[str, Any]) -> list[str]:
        if self.NODE_ONLY and not context.get("node_secrets", True):
            return self.secret_problems()  # an operator's command: the node's secrets are neither needed nor read
        return super().checked(context)

    def problems(self, env: Mapping[str, str]) -> list[str]:
        found = []
        for name in self.SECRETS:
            given = {k: v for k in (f"{name}_env", f"{name}_file") if (v := getattr(self, k)) is not None}
            try:
                secret = resolve_secret(given, name, env, required=self.required(name))
            except ConfigError as exc:
                found.append(exc.detail)
                continue
            if secret is not None:
                self._secrets[name] = secret
        return found + self.secret_problems()

    def required(self, name: str) -> bool:
        """Whether secret `name` must be given (by default every one is)."""
        return True

    def secret_problems(self) -> list[str]:
        """Checks of the other keys and of the secrets' values that were read; none by default."""
        return []

    def secret(self, name: str) -> Secret | None:
        """The secret `name` as read, or None when it was not given."""
        return self._secrets.get(name)

    def needed(self, name: str) -> Secret:
        """The secret `name`, which validation made sure is there."""
        found = self._secrets.get(name)
        if found is None:  # pragma: no cover - `required` said it must be given
            raise ConfigError(f"missing secret {name!r}")
        return found
