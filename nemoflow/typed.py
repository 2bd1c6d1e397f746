"""Typed wrappers around the managed tool and LLM calls (NeMo Flow 0.2's ``nemo_flow.typed``).

The managed calls record JSON. A codec turns the caller's typed values (dataclasses, pydantic
models, anything) into JSON on the way in and back on the way out, so events, guardrails and
intercepts see JSON while the caller and the callback see their own types::

    @dataclass
    class Args:
        query: str

    result = await typed.tool_execute("search", Args("hi"), search, DataclassCodec(Args),
                                      DataclassCodec(Result))

pydantic is optional: ``PydanticCodec`` works with any class that has pydantic v2's
``model_validate`` / ``model_dump`` and is imported nowhere else.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import inspect
import json
import pickle
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from . import llm, tools
from ._managed import LLMRequest
from .types import Json

__all__ = [
    "BestEffortAnyCodec",
    "Codec",
    "DataclassCodec",
    "JsonPassthrough",
    "PydanticCodec",
    "llm_execute",
    "llm_stream_execute",
    "tool_execute",
]

T = TypeVar("T")
TArgs = TypeVar("TArgs")
TResult = TypeVar("TResult")
TResponse = TypeVar("TResponse")
TResponseChunk = TypeVar("TResponseChunk")

# Classes seen by BestEffortAnyCodec in this process, so that a class defined in a function
# (not importable by name) still decodes back to itself.
_RUNTIME_TYPES: weakref.WeakValueDictionary[str, type] = weakref.WeakValueDictionary()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _runtime_token(cls: type) -> str:
    token = f"{_qualname(cls)}:{id(cls)}"
    _RUNTIME_TYPES[token] = cls
    return token


def _resolve_type(token: object, path: object) -> type | None:
    if isinstance(token, str):
        found = _RUNTIME_TYPES.get(token)
        if isinstance(found, type):
            return found
    if not isinstance(path, str) or not path:
        return None
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        qual = parts[split:]
        if "<locals>" in qual:
            continue
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
            for part in qual:
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, type):
            return obj
    return None


def _dataclass_json(value: Any) -> Json:
    # None fields are left out, nested dataclasses become objects (NeMo Flow's encoding).
    return {f.name: _value_json(v) for f in dataclasses.fields(value)
            if (v := getattr(value, f.name)) is not None}


def _value_json(value: Any) -> Json:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass_json(value)
    if isinstance(value, list):
        return [_value_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _value_json(item) for key, item in value.items()}
    return cast(Json, value)


class Codec(Generic[T]):
    """Converts a Python type to JSON (``to_json``) and back (``from_json``)."""

    def to_json(self, value: T) -> Json:
        """The JSON form of ``value``."""
        raise NotImplementedError

    def from_json(self, data: Json) -> T:
        """The typed value ``data`` stands for."""
        raise NotImplementedError


class JsonPassthrough(Codec[Json]):
    """The identity codec, for values that are JSON already."""

    def to_json(self, value: Json) -> Json:
        """``value`` unchanged."""
        return value

    def from_json(self, data: Json) -> Json:
        """``data`` unchanged."""
        return data


class PydanticCodec(Codec[T]):
    """A pydantic v2 model class: ``model_dump(mode="json")`` and ``model_validate``."""

    def __init__(self, model_cls: type[T]) -> None:
        if not callable(getattr(model_cls, "model_validate", None)):
            raise TypeError(_pydantic_hint(model_cls))
        self._cls = model_cls

    def to_json(self, value: T) -> Json:
        """``value.model_dump(mode="json")``."""
        dump = getattr(value, "model_dump", None)
        if not callable(dump):
            raise TypeError(f"PydanticCodec({self._cls.__name__}) cannot encode a "
                            f"{type(value).__name__}: it has no model_dump()")
        return cast(Json, dump(mode="json"))

    def from_json(self, data: Json) -> T:
        """``model_cls.model_validate(data)``."""
        return cast(T, cast(Any, self._cls).model_validate(data))

    def __repr__(self):
        return f"PydanticCodec({self._cls.__name__})"


def _pydantic_hint(model_cls: object) -> str:
    name = getattr(model_cls, "__name__", repr(model_cls))
    try:
        importlib.import_module("pydantic")
    except ImportError:
        return (f"PydanticCodec needs a pydantic model class, and pydantic is not installed "
                f"(pip install 'nemoflow[pydantic]'); got {name}")
    return f"PydanticCodec needs a pydantic v2 model class (with model_validate), got {name}"


class DataclassCodec(Codec[T]):
    """A dataclass: its fields as a JSON object (None fields left out), ``cls(**data)`` back."""

    def __init__(self, dc_cls: type[T]) -> None:
        if not (isinstance(dc_cls, type) and dataclasses.is_dataclass(dc_cls)):
            raise TypeError(f"DataclassCodec needs a dataclass, got {dc_cls!r}")
        self._cls = dc_cls

    def to_json(self, value: T) -> Json:
        """The fields of ``value`` as a JSON object."""
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"DataclassCodec({self._cls.__name__}) cannot encode a "
                            f"{type(value).__name__}")
        return _dataclass_json(value)

    def from_json(self, data: Json) -> T:
        """``dc_cls(**data)``."""
        if not isinstance(data, dict):
            raise TypeError(f"DataclassCodec({self._cls.__name__}) needs a JSON object, got "
                            f"{type(data).__name__}")
        return cast(Callable[..., T], self._cls)(**data)

    def __repr__(self):
        return f"DataclassCodec({self._cls.__name__})"


class BestEffortAnyCodec(Codec[object]):
    """Any value, in NeMo Flow's tagged encoding: a model or a dataclass as a tagged object,
    JSON as is, anything else pickled (base64), or as its ``str()`` when even that fails.

    ``from_json`` rebuilds what it can and never raises: an undecodable tag gives back the
    JSON. Unpickling runs code: decode only what this process encoded.
    """

    def to_json(self, value: object) -> Json:
        """``value`` as JSON, tagged with its type where it is not JSON itself."""
        cls = type(value)
        dump = getattr(value, "model_dump", None)
        if callable(dump) and not isinstance(value, type):
            try:
                return {"__nv_pydantic__": _qualname(cls),
                        "__nv_runtime_type__": _runtime_token(cls),
                        "data": dump(mode="json")}
            except Exception:
                pass  # not a model after all: the next encoding
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {"__nv_dataclass__": _qualname(cls),
                    "__nv_runtime_type__": _runtime_token(cls),
                    "data": _dataclass_json(value)}
        try:
            return cast(Json, json.loads(json.dumps(value)))
        except Exception:
            pass
        try:
            return {"__nv_pickle__": _qualname(cls),
                    "data": base64.b64encode(pickle.dumps(value)).decode("ascii")}
        except Exception:
            return {"__nv_fallback_str__": _qualname(cls), "data": str(value)}

    def from_json(self, data: Json) -> object:
        """The value ``data`` encodes, as closely as it can be rebuilt."""
        if not (isinstance(data, dict) and "data" in data):
            return data
        inner = data["data"]
        if "__nv_pydantic__" in data:
            cls = _resolve_type(data.get("__nv_runtime_type__"), data["__nv_pydantic__"])
            try:
                if cls is not None and callable(getattr(cls, "model_validate", None)):
                    return cast(Any, cls).model_validate(inner)
            except Exception:
                pass
        if "__nv_dataclass__" in data:
            cls = _resolve_type(data.get("__nv_runtime_type__"), data["__nv_dataclass__"])
            try:
                if cls is not None and dataclasses.is_dataclass(cls) and isinstance(inner, dict):
                    return cls(**inner)
            except Exception:
                pass
        if "__nv_pickle__" in data and isinstance(inner, str):
            try:
                return pickle.loads(base64.b64decode(inner))
            except Exception:
                pass
        if "__nv_fallback_str__" in data:
            return inner
        return data


async def _settle(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def tool_execute(
    name: str,
    args: TArgs,
    func: Callable[[TArgs], TResult] | Callable[[TArgs], Awaitable[TResult]],
    args_codec: Codec[TArgs],
    result_codec: Codec[TResult],
    *,
    handle: Any = None,
    attributes: int | None = None,
    data: Json | None = None,
    metadata: Json | None = None,
) -> TResult:
    """``tools.execute`` with typed arguments and result; events hold their JSON forms."""
    json_args = args_codec.to_json(args)

    async def json_func(encoded: Json) -> Json:
        result = await _settle(func(args_codec.from_json(encoded)))
        return result_codec.to_json(result)

    out = await tools.execute(name, json_args, json_func, handle=handle, attributes=attributes,
                              data=data, metadata=metadata)
    return result_codec.from_json(out)


def _codec_kwargs(target: Callable, codec: Any, response_codec: Any) -> dict:
    return {key: value for key, value in (("codec", codec), ("response_codec", response_codec))
            if value is not None}


async def llm_execute(
    name: str,
    request: LLMRequest,
    func: Callable[[LLMRequest], TResponse] | Callable[[LLMRequest], Awaitable[TResponse]],
    response_json_codec: Codec[TResponse],
    *,
    handle: Any = None,
    attributes: int | None = None,
    data: Json | None = None,
    metadata: Json | None = None,
    model_name: str | None = None,
    codec: Any = None,
    response_codec: Any = None,
) -> TResponse:
    """``llm.execute`` whose callback returns a typed response; the end event holds its JSON."""
    extra = _codec_kwargs(llm.execute, codec, response_codec)

    async def json_func(req: LLMRequest) -> Json:
        return response_json_codec.to_json(await _settle(func(req)))

    out = await llm.execute(name, request, json_func, handle=handle, attributes=attributes,
                            data=data, metadata=metadata, model_name=model_name, **extra)
    return response_json_codec.from_json(out)


def llm_stream_execute(
    name: str,
    request: LLMRequest,
    func: Callable[[LLMRequest], AsyncIterator[TResponseChunk]],
    collector: Callable[[TResponseChunk], None],
    finalizer: Callable[[], TResponse],
    chunk_json_codec: Codec[TResponseChunk],
    response_json_codec: Codec[TResponse],
    *,
    handle: Any = None,
    attributes: int | None = None,
    data: Json | None = None,
    metadata: Json | None = None,
    model_name: str | None = None,
    codec: Any = None,
    response_codec: Any = None,
) -> llm.LlmStream:
    """``llm.stream_execute`` with typed chunks for ``collector`` and a typed ``finalizer``."""
    extra = _codec_kwargs(llm.stream_execute, codec, response_codec)

    async def json_func(req: LLMRequest) -> AsyncIterator[Json]:
        async for chunk in func(req):
            yield chunk_json_codec.to_json(chunk)

    def json_collector(chunk: Json) -> None:
        collector(chunk_json_codec.from_json(chunk))

    def json_finalizer() -> Json:
        return response_json_codec.to_json(finalizer())

    return llm.stream_execute(name, request, json_func, json_collector, json_finalizer,
                              handle=handle, attributes=attributes, data=data,
                              metadata=metadata, model_name=model_name, **extra)
