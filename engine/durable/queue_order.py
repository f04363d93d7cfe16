"""Per-study delivery order of the outbox, shared by every store backend: which of a lease's
ready candidates may be claimed without overtaking an earlier row of their study.

A row of a study is claimed only when it is its study's first undelivered row, or directly
follows a row of its study claimed in the same lease. An earlier row that is leased elsewhere or
waiting for its backoff holds the later ones back; a dead one does not, so one poisoned instance
never blocks its study. The backend supplies the window of candidates (oldest first) and the
probe "next undelivered row of this study after id"; this module holds no SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: (destination's) next undelivered row id of ``study`` after ``after`` (None: none)
NextOfStudy = Callable[[str, int], "int | None"]


def per_study_claims(window: Sequence[tuple[int, str | None]], limit: int,
                     next_of_study: NextOfStudy) -> list[int]:
    """Ids to claim among ``window`` (``(id, study)`` in lease order), at most ``limit``."""
    by_study: dict[str, list[int]] = {}
    for row_id, study in window:
        if study is not None:
            by_study.setdefault(study, []).append(row_id)
    taken: list[int] = []
    seen: set[str] = set()
    for row_id, study in window:
        if len(taken) >= limit:
            break
        if study is None:
            taken.append(row_id)
            continue
        if study in seen:
            continue
        seen.add(study)
        # The study's run: its first undelivered row, then each next one, while they are
        # ready candidates of this window.
        after = -1
        for candidate in sorted(by_study[study]):
            if next_of_study(study, after) != candidate or len(taken) >= limit:
                break
            taken.append(candidate)
            after = candidate
    return taken
