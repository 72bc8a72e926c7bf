"""The registry handed to ``register_*`` hooks.

The host owns the collection, so the host decides what a duplicate name means: it is an error naming both
plugins, never a silent overwrite.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import DuplicateNameError, UnknownNameError
from .options import build_with_options

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered plugin object: its name, the factory that builds it, and who registered it."""

    name: str
    factory: Callable[..., T]
    plugin: str
    description: str = ""


class Registry(Generic[T]):
    """Names -> factories for one plugin kind (``"space"``, ``"proposer"``, ``"evaluator"``, ``"augmenter"``).

    Example::

        def register_search_spaces(register):
            register("tiny", TinySpace, description="a two-layer space")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._current_plugin = "<unknown>"
        #: ``(kind, name) -> message`` for a name that a disabled plugin provides (set by the plugin manager)
        self.explain_unknown: Callable[[str, str], str | None] | None = None

    def _set_current_plugin(self, plugin: str) -> None:
        self._current_plugin = plugin

    def __call__(self, name: str, factory: Callable[..., T], *, description: str = "") -> None:
        """Register ``factory`` under ``name``; a second registration of the same name is an error."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise DuplicateNameError(
                f"plugin {self._current_plugin!r} registered an invalid {self.kind} name {name!r}: "
                "names are lower-case letters, digits, '-', '_' and '.', starting with a letter"
            )
        if not callable(factory):
            raise DuplicateNameError(
                f"plugin {self._current_plugin!r} registered {self.kind} {name!r} with a non-callable factory"
            )
        if name in self._entries:
            other = self._entries[name].plugin
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice: by {other!r} and by {self._current_plugin!r}; "
                "block one of them with AUTOML_KD_DISABLE_PLUGINS or --disable-plugin"
            )
        doc = description or (factory.__doc__ or "").strip().split("\n")[0]
        self._entries[name] = Entry(name, factory, self._current_plugin, doc)

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            why = self.explain_unknown(self.kind, name) if self.explain_unknown else None
            if why:
                raise UnknownNameError(f"{why}; registered: {known}") from None
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def create(
        self, name: str, options: Mapping[str, Any] | None = None, *, where: str | None = None, **host: Any
    ) -> T:
        """Build the plugin object ``name``.

        ``options`` come from the user and are validated against the factory's signature; ``host`` arguments
        (``space``, ``seed``, ``num_classes``, ...) are passed by the host, each only where the factory accepts it
        and the user did not set it. ``where`` names the config key in error messages (default: the kind).
        """
        built: T = build_with_options(self.get(name), options or {}, where or self.kind, **host)
        return built

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
