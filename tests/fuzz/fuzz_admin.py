"""Fuzz harness: the admin API's request models (every pydantic model in ``engine.admin`` that
a route validates its parameters or body with), fed as a JSON body (strict, as the API reads
bodies) and as query parameters.

The first byte picks the model and the form. Expected: pydantic's ``ValidationError`` (a 400
with the problems listed). Anything else (a ``RecursionError`` from deep JSON, a ``TypeError``
from a validator) would be a 500 from a malformed request, and is a crash.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
from urllib.parse import parse_qsl

from pydantic import BaseModel, ValidationError

from tests.fuzz._common import fuzz, instrumented

with instrumented():
    import engine.admin


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for info in pkgutil.iter_modules(engine.admin.__path__, "engine.admin."):
        module = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseModel) and obj.__module__.startswith("engine.admin"):
                found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


MODELS = _models()


def one_input(data: bytes) -> None:
    if not data or not MODELS:
        return
    model = MODELS[data[0] % len(MODELS)]
    rest = data[1:]
    if data[0] & 0x80:
        values: dict[str, object] = {}
        for key, value in parse_qsl(rest.decode("utf-8", "replace"), keep_blank_values=True):
            values.setdefault(key, value)
        with contextlib.suppress(ValidationError):
            model.model_validate(values)
        return
    with contextlib.suppress(ValidationError):
        model.model_validate_json(rest, strict=True)


if __name__ == "__main__":
    fuzz(one_input)
