"""Renders radflow's Helm chart without Helm, for tests on machines where the helm binary
cannot be installed (it is not in Debian, and nothing else may be downloaded here).

The chart keeps to a small subset of Helm's Go templates on purpose, and this renders exactly
that subset, failing loudly on anything else: ``{{ .Values.a.b }}``, ``.Release.Name``,
``.Release.Namespace``, ``.Chart.Name/Version/AppVersion``; the functions ``quote``,
``toYaml``, ``nindent``, ``indent``, ``not``, ``eq``, ``default``; pipelines with ``|``;
``if`` / ``else`` / ``end``; whitespace trimming with ``{{-`` and ``-}}``. When helm is on the
PATH, :func:`render_with_helm` renders the same chart with it so the two can be compared.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (
        isinstance(value, dict | list) and not value)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, text: str) -> str:
    return "\n".join((" " * n + line) if line else line for line in str(text).split("\n"))


def _print(value: Any) -> str:
    if value is None:
        return ""  # Go templates print <no value>; the chart never relies on that
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        raise ValueError(f"printing a collection: {value!r} (use toYaml)")
    return str(value)


class _Renderer:
    def __init__(self, context: Mapping[str, Any]) -> None:
        self.context = context

    def lookup(self, path: str) -> Any:
        value: Any = self.context
        for part in path.strip(".").split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    def term(self, token: str) -> Any:
        if token.startswith("."):
            return self.lookup(token)
        if token.startswith('"'):
            return json.loads(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        raise ValueError(f"unsupported term {token!r}")

    def call(self, words: list[str], piped: list[Any]) -> Any:
        name, args = words[0], [self.term(w) for w in words[1:]] + piped
        if name == "quote":
            return json.dumps(_print(args[0]))
        if name == "toYaml":
            return _to_yaml(args[0])
        if name == "nindent":
            return "\n" + _indent(int(args[0]), args[1])
        if name == "indent":
            return _indent(int(args[0]), args[1])
        if name == "not":
            return not _truthy(args[0])
        if name == "eq":
            return args[0] == args[1]
        if name == "default":
            return args[1] if _truthy(args[1]) else args[0]
        raise ValueError(f"unsupported function {name!r}")

    def evaluate(self, expression: str) -> Any:
        value: Any = None
        for i, stage in enumerate(s.strip() for s in expression.split("|")):
            words = shlex.split(stage, posix=False)
            if i == 0 and len(words) == 1 and not words[0][0].isalpha():
                value = self.term(words[0])
            else:
                value = self.call(words, [] if i == 0 else [value])
        return value


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", expr) pieces with Helm's whitespace trimming applied."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(text):
        chunk = text[pos:match.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if match.group(1):
            chunk = chunk.rstrip()
        pieces.append(("text", chunk))
        expression = match.group(2)
        if not expression.startswith("/*"):
            pieces.append(("action", expression))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = text[pos:]
    pieces.append(("text", tail.lstrip() if trim_next else tail))
    return pieces


def render_template(text: str, context: Mapping[str, Any]) -> str:
    renderer = _Renderer(context)
    out: list[str] = []
    # stack of (emitting, branch_taken) for nested if/else/end
    stack: list[tuple[bool, bool]] = []
    emitting = True
    for kind, value in _tokens(text):
        if kind == "text":
            if emitting:
                out.append(value)
            continue
        head = value.split(None, 1)
        if head[0] == "if":
            cond = emitting and _truthy(renderer.evaluate(head[1]))
            stack.append((emitting, cond))
            emitting = cond
        elif head[0] == "else":
            parent, taken = stack[-1]
            emitting = parent and not taken
        elif head[0] == "end":
            emitting = stack.pop()[0]
        elif head[0] in ("range", "with", "define", "template", "include", "block", "else if"):
            raise ValueError(f"unsupported action {value!r}")
        elif emitting:
            out.append(_print(renderer.evaluate(value)))
    assert not stack, "unclosed if"
    return "".join(out)


def chart_context(chart_dir: Path, values: Mapping[str, Any] | None = None,
                  release: str = "radflow", namespace: str = "default") -> dict[str, Any]:
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    return {
        "Values": _merge(defaults, values or {}),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart["appVersion"]},
    }


def render_chart(chart_dir: Path, values: Mapping[str, Any] | None = None,
                 release: str = "radflow") -> list[dict[str, Any]]:
    """Every manifest the chart's templates produce, parsed."""
    context = chart_context(chart_dir, values, release)
    docs: list[dict[str, Any]] = []
    for template in sorted((chart_dir / "templates").glob("*.yaml")):
        text = render_template(template.read_text(), context)
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def render_with_helm(chart_dir: Path, values_file: Path | None = None,
                     release: str = "radflow") -> list[dict[str, Any]] | None:
    """``helm template`` of the chart, parsed; None when helm is not installed."""
    helm = shutil.which("helm")
    if helm is None:
        return None
    args = [helm, "template", release, str(chart_dir)]
    if values_file is not None:
        args += ["-f", str(values_file)]
    done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120)
    return [d for d in yaml.safe_load_all(done.stdout) if d]
