"""The states of a work and the moves between them, in one place.

```
requested ──► restored ──► downloaded ──► debagged ──► synced ──(newer restore)──► restored
                 │             │              │
                 └─────────────┴──────────────┴──► failed ──► (the phase that runs next)
```
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a work is on its way to the archive (stored as its string value)."""

    REQUESTED = "requested"
    RESTORED = "restored"
    DOWNLOADED = "downloaded"
    DEBAGGED = "debagged"
    SYNCED = "synced"
    FAILED = "failed"


# States a run may claim a work in: it has a phase left to run.
PENDING: frozenset[State] = frozenset(
    {State.RESTORED, State.DOWNLOADED, State.DEBAGGED, State.FAILED}
)
_PHASES = {State.DOWNLOADED, State.DEBAGGED, State.SYNCED, State.FAILED}

# Every allowed move. A phase may run again (an operator clears a task, a crash before the
# record), so a pending work may record any phase's state; only a newer restore reopens a
# synced work; a requested restore becomes work when its Completed event arrives.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.REQUESTED, State.RESTORED}),
    State.RESTORED: frozenset(_PHASES | {State.RESTORED}),
    State.DOWNLOADED: frozenset(_PHASES),
    State.DEBAGGED: frozenset(_PHASES),
    State.FAILED: frozenset(_PHASES),
    State.SYNCED: frozenset({State.SYNCED, State.RESTORED}),
}


def parse_state(value: str) -> State:
    """``value`` as a State; ValueError naming the known ones otherwise."""
    try:
        return State(value)
    except ValueError:
        known = ", ".join(s.value for s in State)
        raise ValueError(f"unknown state {value!r}; one of {known}") from None


def check_move(current: str, new: str) -> State:
    """Return ``new`` as a State when a work in ``current`` may move there; ValueError if not."""
    target = parse_state(new)
    if target not in TRANSITIONS[parse_state(current)]:
        raise ValueError(f"a work that is {current} cannot become {target}")
    return target
