"""Regular expressions from route files, compiled so that no input can make them run away.

Route authors write regexes in ``match`` predicates and ``regex_replace`` morphs; a pattern like
``(a+)+$`` makes a backtracking engine (Python's ``re``) take exponential time on a short value,
which would freeze routing for everyone. Python's ``re`` cannot be interrupted, and a complexity
check on its patterns can only guess (``.*a.*b.*c`` is polynomial, ``(a|aa)+`` exponential, and
neither is easy to recognise in general). So patterns are compiled with RE2 (``google-re2``),
whose automaton runs in time linear in the input for every pattern: catastrophic backtracking
cannot happen at all. The price is RE2's syntax: no backreferences and no lookaround; such
patterns are rejected when the route file is loaded, with RE2's reason. Patterns are also
limited in length and compiled with a memory cap, and values longer than
:data:`MAX_INPUT_CHARS` are matched on their first characters only (DICOM text values that
routes look at are short; a 10 MB UT is not read whole). This module must not be bypassed:
rules and morphs compile every user regex through :func:`compile_regex`.
"""

from __future__ import annotations

import re
from typing import Any, Final

import re2

MAX_PATTERN_CHARS: Final = 1024
MAX_INPUT_CHARS: Final = 4096
_MAX_MEM: Final = 8 << 20


class RegexError(ValueError):
    """A pattern RE2 refuses or that is too large."""


def _options(ignore_case: bool) -> Any:
    options = re2.Options()
    options.log_errors = False  # the reason is reported through RegexError, not stderr
    options.max_mem = _MAX_MEM
    options.case_sensitive = not ignore_case
    return options


class SafeRegex:
    """A compiled RE2 pattern with ``search`` and ``sub`` on bounded input."""

    __slots__ = ("_compiled", "ignore_case", "pattern")

    def __init__(self, pattern: str, ignore_case: bool = False) -> None:
        if not isinstance(pattern, str) or pattern == "":
            raise RegexError("a regex must be a non-empty string")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise RegexError(f"regex longer than {MAX_PATTERN_CHARS} characters")
        try:
            self._compiled = re2.compile(pattern, _options(ignore_case))
        except Exception as exc:  # re2._re2.Error carries RE2's message as bytes
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            hint = ""
            if "\\1" in pattern or "(?=" in pattern or "(?!" in pattern or "(?<" in pattern:
                hint = " (backreferences and lookaround are not supported)"
            raise RegexError(f"invalid regex {pattern!r}: {reason}{hint}") from None
        self.pattern = pattern
        self.ignore_case = ignore_case

    def search(self, value: str) -> bool:
        return self._compiled.search(value[:MAX_INPUT_CHARS]) is not None

    def sub(self, replacement: str, value: str, count: int = 0) -> str:
        # Expanded here rather than by RE2's own sub, whose Python binding mangles non-ASCII
        # replacement text; RE2 still finds the matches (in linear time).
        head, tail = value[:MAX_INPUT_CHARS], value[MAX_INPUT_CHARS:]
        out: list[str] = []
        pos = 0
        for n, m in enumerate(self._compiled.finditer(head)):
            if count and n >= count:
                break
            out.append(head[pos:m.start()])
            out.append(_expand(replacement, m))
            pos = m.end()
        out.append(head[pos:])
        return "".join(out) + tail

    def check_replacement(self, replacement: str) -> None:
        """Raise :class:`RegexError` when ``replacement`` names a group the pattern lacks."""
        groups = int(self._compiled.groups)
        names = set(self._compiled.groupindex)
        for m in _GROUP_REF.finditer(replacement):
            ref = m.group(1) or m.group(2)
            if ref is None:
                continue
            if ref.isdigit() and int(ref) > groups:
                raise RegexError(f"replacement {replacement!r} refers to group {ref}, the "
                                 f"pattern has {groups}")
            if not ref.isdigit() and ref not in names:
                raise RegexError(f"replacement {replacement!r} refers to an unknown group "
                                 f"{ref!r}")


_GROUP_REF = re.compile(r"\\(\d+)|\\g<(\w+)>|\\\\")


def _expand(template: str, m: Any) -> str:
    """``\\1``, ``\\g<1>``, ``\\g<name>`` from the match (absent groups: empty), ``\\\\`` a
    backslash, everything else literal."""
    def group(ref: re.Match[str]) -> str:
        name = ref.group(1) or ref.group(2)
        if name is None:
            return "\\"
        value = m.group(int(name) if name.isdigit() else name)
        return "" if value is None else str(value)

    return _GROUP_REF.sub(group, template)


def compile_regex(pattern: str, ignore_case: bool = False) -> SafeRegex:
    return SafeRegex(pattern, ignore_case)
