"""Decoding a message's raw arguments against the task function's annotations.

Built once per task (lazily, so annotations may name types defined after the decorator ran)
and cached; the per-message path is one decode of the argument array plus one cached decoder
call per argument.
"""

from __future__ import annotations

import inspect
import logging
import re
import typing
from collections.abc import Callable
from typing import Any

import msgspec

from .errors import ArgumentError
from .message import raw_is_empty
from .serialization import DECODE_ERRORS, SerializerName, decode

log = logging.getLogger("aqueue.task")

_RAW_LIST = list[msgspec.Raw]
_RAW_DICT = dict[str, msgspec.Raw]
_PATH = re.compile(r" - at `\$(.*)`$")


class ArgumentSpec:
    """The parameter types of one task function and the type of its result."""

    def __init__(self, fn: Callable[..., Any], *, skip_first: bool) -> None:
        self._fn = fn
        self._skip_first = skip_first
        self._resolved = False
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        if skip_first:
            if not params or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                raise TypeError(f"bind=True task {fn.__qualname__} must take `self` first")
            params = params[1:]
            self.signature = self.signature.replace(parameters=params)
        self._params = params
        self._positional: list[Any] = []
        self._by_name: dict[str, Any] = {}
        self._var_positional: Any = None
        self._var_keyword: Any = None
        self._result: Any = Any
        # positional counts that need no bind() when no keyword is passed (the common call)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required_kw = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
        self._min_pos = sum(1 for p in positional if p.default is p.empty)
        self._max_pos = (
            -1
            if required_kw or any(p.kind is p.VAR_POSITIONAL for p in params)
            else len(positional)
        )

    def _resolve(self) -> None:
        try:
            hints = typing.get_type_hints(self._fn)
        except Exception as exc:  # a NameError in an annotation must not kill the worker
            log.warning(
                "cannot resolve annotations of %s (%s); arguments are not validated",
                self._fn.__qualname__,
                exc,
            )
            hints = {}
        positional: list[Any] = []
        for p in self._params:
            tp = hints.get(p.name, Any)
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                positional.append(tp)
            if p.kind is p.VAR_POSITIONAL:
                self._var_positional = tp
            elif p.kind is p.VAR_KEYWORD:
                self._var_keyword = tp
            elif p.kind is not p.POSITIONAL_ONLY:
                self._by_name[p.name] = tp
        self._positional = positional
        result = hints.get("return", Any)
        self._result = type(None) if result is None else result
        self._resolved = True

    @property
    def result_type(self) -> Any:
        """The return annotation (``Any`` when absent)."""
        if not self._resolved:
            self._resolve()
        return self._result

    def _name_at(self, index: int) -> str:
        positional = [
            p.name for p in self._params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return positional[index] if index < len(positional) else f"*args[{index}]"

    def check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise :class:`ArgumentError` if the arguments do not fit the signature's arity."""
        if not kwargs and self._min_pos <= len(args) <= self._max_pos:
            return  # positional only, a count that fits: no bind() needed
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"{self._fn.__qualname__}(): {exc}") from None

    def decode(
        self, raw_args: msgspec.Raw, raw_kwargs: msgspec.Raw, fmt: SerializerName
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Decode and check arguments; raise :class:`ArgumentError` naming the bad field."""
        if not self._resolved:
            self._resolve()
        try:
            items: list[msgspec.Raw] = (
                [] if raw_is_empty(raw_args) else decode(raw_args, _RAW_LIST, fmt)
            )
            named: dict[str, msgspec.Raw] = (
                {} if raw_is_empty(raw_kwargs) else decode(raw_kwargs, _RAW_DICT, fmt)
            )
        except DECODE_ERRORS as exc:
            raise ArgumentError(f"arguments are not an array and a map: {exc}") from None
        args: list[Any] = []
        for i, item in enumerate(items):
            if i < len(self._positional):
                tp = self._positional[i]
            elif self._var_positional is not None:
                tp = self._var_positional
            else:
                tp = Any  # arity is checked by bind() below, with Python's own message
            args.append(self._decode_one(item, tp, self._name_at(i), fmt))
        kwargs: dict[str, Any] = {}
        for key, item in named.items():
            tp = self._by_name.get(key, self._var_keyword if self._var_keyword else Any)
            kwargs[key] = self._decode_one(item, tp, key, fmt)
        if kwargs or not self._min_pos <= len(args) <= self._max_pos:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise ArgumentError(str(exc)) from None
        return tuple(args), kwargs

    @staticmethod
    def _decode_one(item: msgspec.Raw, tp: Any, name: str, fmt: SerializerName) -> Any:
        try:
            return decode(item, tp, fmt)
        except msgspec.ValidationError as exc:
            text = str(exc)
            match = _PATH.search(text)
            where = name + (match.group(1) if match else "")
            text = _PATH.sub("", text)
            raise ArgumentError(f"argument {where!r}: {text}") from None
        except DECODE_ERRORS as exc:
            raise ArgumentError(f"argument {name!r}: {exc}") from None
