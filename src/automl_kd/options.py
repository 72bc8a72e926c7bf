"""Validation of plugin options against the plugin factory's signature.

A plugin's options come from the config as a plain mapping. Rather than each plugin checking its own keys, the host
builds a pydantic model from the factory's typed signature, so every plugin gets the same clear messages
("space.options.widths: Input should be a valid list") without writing any validation code.

A factory that takes ``**kwargs`` may name the options they stand for in a class attribute ``extra_options``
(name -> (type, default)); those are options like the signature's, and no other keyword is accepted. The ``train``
evaluator's are :class:`automl_kd.distill.settings.TrainSettings`' fields, so its options are the settings model.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

import pydantic

from .errors import ConfigError

# Parameters a host passes itself; they are not user options.
HOST_PARAMS = frozenset(
    {
        "self",
        "space",
        "seed",
        "directions",
        "context",
        "constraints",
        "run_dir",
        "should_stop",
        "plugins",
        "resource",
    }
)


def _signature_target(factory: Any) -> Any:
    return factory.__init__ if inspect.isclass(factory) else factory


def extra_options(factory: Any) -> dict[str, tuple[Any, Any]]:
    """The options ``factory`` declares besides its signature (its ``extra_options`` attribute)."""
    return dict(getattr(factory, "extra_options", None) or {})


def option_fields(factory: Any) -> dict[str, tuple[Any, Any]]:
    """The user-settable options of ``factory``: name -> (type, default)."""
    target = _signature_target(factory)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    fields: dict[str, tuple[Any, Any]] = {}
    for p in inspect.signature(target).parameters.values():
        if p.name in HOST_PARAMS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    fields.update(extra_options(factory))
    return fields


def parameter_names(factory: Any) -> set[str]:
    """Every keyword the factory accepts (host arguments included)."""
    return set(inspect.signature(_signature_target(factory)).parameters) - {"self"}


def accepts_var_keywords(factory: Any) -> bool:
    """Whether ``factory`` takes any keyword (``**kwargs`` that declares no ``extra_options``)."""
    target = _signature_target(factory)
    if extra_options(factory):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(target).parameters.values())


def validate_options(factory: Any, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check ``options`` against ``factory``'s signature; return them converted to the declared types.

    Raises :class:`ConfigError` naming ``where.key`` and what is allowed.
    """
    fields = option_fields(factory)
    if not accepts_var_keywords(factory):
        unknown = sorted(set(options) - set(fields))
        if unknown:
            allowed = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"{where}: unknown option {unknown[0]!r}; allowed: {allowed}")
    known = {k: v for k, v in options.items() if k in fields}
    model = pydantic.create_model(  # type: ignore[call-overload]
        "Options",
        __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
        **fields,
    )
    try:
        validated = model(**known)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{where}.{loc}: {err['msg']} (got {err.get('input')!r})") from None
    out = {k: getattr(validated, k) for k in known}
    out.update({k: v for k, v in options.items() if k not in fields})
    return out


def host_arguments(factory: Any, host: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The host arguments (``space``, ``seed``, ``num_classes``, ...) that ``factory`` accepts and the user did not
    set as options: the one rule for every plugin kind, so a factory declares only what it needs."""
    if accepts_var_keywords(factory):
        return {k: v for k, v in host.items() if k not in options}
    names = parameter_names(factory)
    return {k: v for k, v in host.items() if k in names and k not in options}


def build_with_options(entry: Any, options: Mapping[str, Any], where: str, **host: Any) -> Any:
    """Validate ``options`` for a registry entry and call its factory with them plus the host arguments it
    accepts (see :func:`host_arguments`)."""
    opts = validate_options(entry.factory, options, f"{where} {entry.name!r} options")
    try:
        return entry.factory(**host_arguments(entry.factory, host, options), **opts)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} {entry.name!r}: {exc}") from exc
