"""Workflow definitions (formats §3): the model, the validator and the built-in ``message-session``.

``parse(raw, origin=..., path=..., guards=...)`` turns one mapping (a YAML file or what a plugin
returned from ``register_workflows``) into a :class:`Definition`, accepting the canonical form and
the compatibility encodings of formats §3.1, or raises :class:`DefinitionError` naming the first
problem. State and event names are trimmed and upper-cased for the engine; ``canonical`` keeps them
as declared for ``GET /workflow/{name}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from sdk.chat import SESSION_STATES, SESSION_TIMEOUTS, SESSION_TRANSITIONS

__all__ = [
    "ANY",
    "ARCHIVED",
    "BUILTIN_GUARDS",
    "LAST_ACTIVE",
    "MESSAGE_SESSION",
    "Definition",
    "DefinitionError",
    "ErrorRecovery",
    "StateTimeout",
    "Transition",
    "backoff_ms",
    "message_session",
    "parse",
]

ARCHIVED = "ARCHIVED"
ANY = "*"
#: The engine's spelling of ``$last_active`` (the instance's ``last_active_state``).
LAST_ACTIVE = "$LAST_ACTIVE"
BUILTIN_GUARDS = ("has_permission", "max_retry")
MESSAGE_SESSION = "message-session"
TIMEOUT_MAX_MS = 31_536_000_000


class DefinitionError(ValueError):
    """A definition that cannot be loaded (formats §3.5). Its message is cut to
    :data:`REASON_MAX` characters: a reason may quote a value, and a value may be huge."""

    def __init__(self, reason: str) -> None:
        if len(reason) > REASON_MAX:
            reason = reason[:REASON_MAX] + "…"
        super().__init__(reason)


REASON_MAX = 500


@frozen(kw_only=True)
class Transition:
    """One transition; state names upper-cased, ``source`` is ``*`` for any non-final state."""

    source: str
    event: str
    to: str
    guard: str | None = None
    on_fail: str | None = None
    action: tuple[str, str] | None = None  # ("skill" | "pipeline", name)
    on_action_failure: str | None = None


@frozen(kw_only=True)
class StateTimeout:
    state: str
    timeout_ms: int
    on_timeout: str
    on_timeout_alert: bool = False


@frozen(kw_only=True)
class ErrorRecovery:
    auto_retry_count: int = 0
    max_retry_count: int = 3
    #: ("immediate", None), ("exponential", None), ("fixed", ms) or ("sequence", (ms, ...)).
    retry_backoff: tuple[str, Any] = ("immediate", None)
    on_retry_failure: str = "manual_only"


@frozen(kw_only=True)
class Definition:
    """A loaded workflow. ``key`` is the case-insensitive lookup name."""

    name: str
    states: tuple[str, ...]
    initial_state: str
    final_states: frozenset[str]
    error_state: str | None
    transitions: tuple[Transition, ...]
    timeouts: Mapping[str, StateTimeout]
    recovery: ErrorRecovery
    origin: str
    path: str | None
    canonical: Mapping[str, Any]

    @property
    def key(self) -> str:
        return self.name.casefold()

    def is_final(self, state: str) -> bool:
        return state == ARCHIVED or state in self.final_states

    def find(self, state: str, event: str) -> Transition | None:
        """The first transition (in declared order) from ``state`` on ``event``."""
        for t in self.transitions:
            if t.event == event and (t.source == state or t.source == ANY):
                return t
        return None

    def describe(self) -> dict[str, Any]:
        """The JSON of ``GET /workflow/{name}``."""
        return {**self.canonical, "origin": self.origin, "path": self.path}


def backoff_ms(backoff: tuple[str, Any], n: int) -> int:
    """The delay before automatic retry ``n`` (1-based), formats §3.1."""
    kind, value = backoff
    if kind == "exponential":
        return int(min(1000 * 2 ** (n - 1), 60_000))
    if kind == "fixed":
        return int(value)
    if kind == "sequence":
        return int(value[min(n, len(value)) - 1])
    return 0


# --- parsing ---------------------------------------------------------------------------------


def parse(
    raw: Any, *, origin: str, path: str | None = None, guards: Sequence[str] = ()
) -> Definition:
    """Validate one definition mapping; ``guards`` are the plugin guard names known now."""
    if not isinstance(raw, Mapping):
        raise DefinitionError("a workflow definition must be a mapping")
    name = _text(raw, "name", 128)
    where = f"workflow {name}: "
    try:
        return _parse(raw, name, origin, path, (*BUILTIN_GUARDS, *guards))
    except DefinitionError as exc:
        raise DefinitionError(where + str(exc)) from None


def _parse(
    raw: Mapping[str, Any], name: str, origin: str, path: str | None, guards: Sequence[str]
) -> Definition:
    declared_states = _states(raw)
    states = tuple(s.strip().upper() for s in declared_states)
    known = set(states) | {ARCHIVED}

    def state(value: Any, field: str, *, last_active: bool = False) -> tuple[str, Any]:
        """(engine name, declared form) of a state reference."""
        value = _unwrap_specific(value, field)
        if isinstance(value, str):
            text = value.strip()
            if last_active and text.casefold() in ("$last_active", "lastactivestate"):
                return LAST_ACTIVE, "$last_active"
            if text.upper() in known:
                return text.upper(), value
        raise DefinitionError(f"'{field}' refers to an unknown state: {value!r}")

    if "initial_state" not in raw:
        raise DefinitionError("missing required field 'initial_state'")
    initial, initial_decl = state(raw["initial_state"], "initial_state")
    finals_raw = raw.get("final_states") or []
    if not isinstance(finals_raw, list):
        raise DefinitionError("'final_states' must be a list of state names")
    finals = [state(f, "final_states") for f in finals_raw]
    final_set = frozenset(f for f, _ in finals)
    if initial in final_set or initial == ARCHIVED:
        raise DefinitionError("'initial_state' must not be a final state")
    error_state: str | None = None
    error_decl = None
    if raw.get("error_state") is not None:
        error_state, error_decl = state(raw["error_state"], "error_state")
        if error_state in final_set or error_state == ARCHIVED:
            raise DefinitionError("'error_state' must not be a final state")

    transitions: list[Transition] = []
    transitions_out: list[dict[str, Any]] = []
    raw_transitions = raw.get("transitions") or []
    if not isinstance(raw_transitions, list):
        raise DefinitionError("'transitions' must be a list")
    for i, t in enumerate(raw_transitions):
        field = f"transitions[{i}]"
        if not isinstance(t, Mapping):
            raise DefinitionError(f"'{field}' must be a mapping")
        for key in ("from", "event", "to"):
            if t.get(key) is None:
                raise DefinitionError(f"missing required field '{field}.{key}'")
        source_raw = _unwrap_specific(t["from"], f"{field}.from")
        if isinstance(source_raw, str) and source_raw.strip().casefold() in ("*", "any"):
            source, source_decl = ANY, "*"
        else:
            source, source_decl = state(source_raw, f"{field}.from")
        event = _text(t, "event", 128, prefix=f"{field}.").strip().upper()
        to, to_decl = state(t["to"], f"{field}.to", last_active=True)
        guard = t.get("guard")
        if guard is not None and (not isinstance(guard, str) or guard not in guards):
            raise DefinitionError(f"'{field}.guard' is an unknown guard: {guard!r}")
        on_fail = on_fail_decl = None
        if t.get("on_fail") is not None:
            on_fail, on_fail_decl = state(t["on_fail"], f"{field}.on_fail")
        action, action_decl = _action(t.get("action"), f"{field}.action")
        on_af = on_af_decl = None
        if t.get("on_action_failure") is not None:
            on_af, on_af_decl = state(
                t["on_action_failure"], f"{field}.on_action_failure", last_active=True
            )
        transitions.append(
            Transition(
                source=source,
                event=event,
                to=to,
                guard=guard,
                on_fail=on_fail,
                action=action,
                on_action_failure=on_af,
            )
        )
        transitions_out.append(
            {
                "from": source_decl,
                "event": t["event"],
                "to": to_decl,
                "guard": guard,
                "on_fail": on_fail_decl,
                "action": action_decl,
                "on_action_failure": on_af_decl,
            }
        )

    timeouts: dict[str, StateTimeout] = {}
    timeouts_out: list[dict[str, Any]] = []
    raw_timeouts = raw.get("state_timeouts") or []
    if not isinstance(raw_timeouts, list):
        raise DefinitionError("'state_timeouts' must be a list")
    for i, st in enumerate(raw_timeouts):
        field = f"state_timeouts[{i}]"
        if not isinstance(st, Mapping):
            raise DefinitionError(f"'{field}' must be a mapping")
        for key in ("state", "timeout_ms", "on_timeout"):
            if st.get(key) is None:
                raise DefinitionError(f"missing required field '{field}.{key}'")
        which, which_decl = state(st["state"], f"{field}.state")
        if which in timeouts:
            raise DefinitionError(f"state {which_decl} has more than one timeout")
        ms = _int(st["timeout_ms"], f"{field}.timeout_ms", 1, TIMEOUT_MAX_MS)
        target, target_decl = state(st["on_timeout"], f"{field}.on_timeout", last_active=True)
        alert = st.get("on_timeout_alert", False)
        if not isinstance(alert, bool):
            raise DefinitionError(f"'{field}.on_timeout_alert' must be a boolean")
        timeouts[which] = StateTimeout(
            state=which, timeout_ms=ms, on_timeout=target, on_timeout_alert=alert
        )
        timeouts_out.append(
            {
                "state": which_decl,
                "timeout_ms": ms,
                "on_timeout": target_decl,
                "on_timeout_alert": alert,
            }
        )

    recovery, recovery_out = _recovery(raw.get("error_recovery"))
    canonical = {
        "name": name,
        "states": [{"name": s} for s in declared_states],
        "initial_state": initial_decl,
        "final_states": [decl for _, decl in finals],
        "error_state": error_decl,
        "transitions": transitions_out,
        "state_timeouts": timeouts_out,
        "error_recovery": recovery_out,
    }
    return Definition(
        name=name,
        states=states,
        initial_state=initial,
        final_states=final_set,
        error_state=error_state,
        transitions=tuple(transitions),
        timeouts=timeouts,
        recovery=recovery,
        origin=origin,
        path=path,
        canonical=canonical,
    )


def _text(raw: Mapping[str, Any], key: str, limit: int, *, prefix: str = "") -> str:
    if raw.get(key) is None:
        raise DefinitionError(f"missing required field '{prefix}{key}'")
    value = raw[key]
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= limit:
        raise DefinitionError(f"'{prefix}{key}' must be a string of 1-{limit} characters")
    return value.strip() if key == "name" else value


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionError(f"'{field}' must be an integer")
    if not low <= value <= high:
        raise DefinitionError(f"'{field}' must be between {low} and {high}")
    return value


def _states(raw: Mapping[str, Any]) -> list[str]:
    if raw.get("states") is None:
        raise DefinitionError("missing required field 'states'")
    items = raw["states"]
    if not isinstance(items, list) or not items:
        raise DefinitionError("'states' must be a non-empty list")
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Mapping):
            item = item.get("name")
        if not isinstance(item, str) or not 1 <= len(item.strip()) <= 64:
            raise DefinitionError(f"invalid state name: {item!r} (1-64 characters)")
        upper = item.strip().upper()
        if upper in seen:
            raise DefinitionError(f"state names collide after upper-casing: {upper}")
        seen.add(upper)
        out.append(item)
    return out


def _unwrap_specific(value: Any, field: str) -> Any:
    """``{Specific: X}`` → ``X`` (compatibility encoding); other mappings are errors."""
    if isinstance(value, Mapping):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if isinstance(key, str) and key.casefold() == "specific":
                return inner
        raise DefinitionError(f"'{field}' has an unknown form: {dict(value)!r}")
    return value


def _action(value: Any, field: str) -> tuple[tuple[str, str] | None, dict[str, str] | None]:
    if value is None:
        return None, None
    if isinstance(value, Mapping) and len(value) == 1:
        ((key, name),) = value.items()
        kind = key.casefold() if isinstance(key, str) else None
        if kind in ("skill", "pipeline") and isinstance(name, str) and name.strip():
            return (kind, name), {kind: name}
    raise DefinitionError(f"'{field}' must be {{skill: <name>}} or {{pipeline: <id>}}")


def _enum(value: Any, field: str, choices: Mapping[str, str]) -> str:
    if isinstance(value, str):
        key = value.strip().casefold().replace("_", "")
        if key in choices:
            return choices[key]
    raise DefinitionError(
        f"invalid value for '{field}': {value!r} (expected one of: {', '.join(choices.values())})"
    )


def _recovery(raw: Any) -> tuple[ErrorRecovery, dict[str, Any]]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise DefinitionError("'error_recovery' must be a mapping")
    field = "error_recovery"
    auto = _int(raw.get("auto_retry_count", 0), f"{field}.auto_retry_count", 0, 100)
    most = _int(raw.get("max_retry_count", 3), f"{field}.max_retry_count", 0, 1000)
    on_failure = _enum(
        raw.get("on_retry_failure", "manual_only"),
        f"{field}.on_retry_failure",
        {"archive": "archive", "manualonly": "manual_only"},
    )
    backoff: tuple[str, Any]
    out: Any
    value = raw.get("retry_backoff", "immediate")
    where = f"{field}.retry_backoff"
    if isinstance(value, Mapping) and len(value) == 1:
        ((key, inner),) = value.items()
        kind = key.casefold() if isinstance(key, str) else ""
        if kind == "fixed":
            ms = _int(inner, f"{where}.fixed", 0, TIMEOUT_MAX_MS)
            backoff, out = ("fixed", ms), {"fixed": ms}
        elif kind == "sequence":
            if not isinstance(inner, list) or not inner:
                raise DefinitionError(f"'{where}.sequence' must be a non-empty list of integers")
            seq = tuple(_int(v, f"{where}.sequence", 0, TIMEOUT_MAX_MS) for v in inner)
            backoff, out = ("sequence", seq), {"sequence": list(seq)}
        else:
            raise DefinitionError(
                f"invalid value for '{where}': {dict(value)!r}"
                " (expected one of: immediate, exponential, {fixed: ms}, {sequence: [ms, ...]})"
            )
    else:
        kind = _enum(value, where, {"immediate": "immediate", "exponential": "exponential"})
        backoff, out = (kind, None), kind
    recovery = ErrorRecovery(
        auto_retry_count=auto,
        max_retry_count=most,
        retry_backoff=backoff,
        on_retry_failure=on_failure,
    )
    return recovery, {
        "auto_retry_count": auto,
        "max_retry_count": most,
        "retry_backoff": out,
        "on_retry_failure": on_failure,
    }


# --- the built-in message-session (http-api §11.2, formats §3.6) ------------------------------

_TARGETS = {(f, e): t for f, e, t in SESSION_TRANSITIONS}


def message_session() -> Definition:
    """The built-in ``message-session`` definition (no final states, no automatic retries)."""
    raw = {
        "name": MESSAGE_SESSION,
        "states": list(SESSION_STATES),
        "initial_state": "ACTIVE",
        "final_states": [],
        "error_state": "ERROR",
        "transitions": [{"from": f, "event": e, "to": t} for f, e, t in SESSION_TRANSITIONS],
        "state_timeouts": [  # the chat plugin runs them, with the durations of [chat.timeouts]
            {"state": s, "timeout_ms": sec * 1000, "on_timeout": _TARGETS[s, event]}
            for s, _, sec, event in SESSION_TIMEOUTS
        ],
        "error_recovery": {
            "auto_retry_count": 0,
            "max_retry_count": 3,
            "retry_backoff": "immediate",
            "on_retry_failure": "manual_only",
        },
    }
    return parse(raw, origin="builtin")
