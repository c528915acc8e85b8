"""The workflow engine: definitions, instances in the store, events, retries and timeouts.

Processing follows formats §3.4 and the engine rules of http-api §8. Every change of an instance is
written to the store (and committed) before the call that caused it returns, and every transition
publishes ``workflow_state_changed`` after its commit. One lock per instance serialises the events
of that instance; different instances run concurrently.

Timeouts: each state's clock runs while the instance is in it. Leaving the state stores the time
left in ``remaining_ms``; re-entering takes it from there (a timeout that fired consumes the
clock, so the next entry starts afresh). The deadline of the current state is kept in the private
column ``due_at``; a poller looks every ``workflows.timeout_poll_ms`` for instances whose deadline
or automatic retry (``retry_at``) has passed, so deadlines that passed while the runtime was down
fire at the first check after start.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from attrs import Factory, define, frozen

from sdk import (
    NOTIFIER,
    SKILL_RUNNER,
    Conflict,
    Event,
    Migration,
    NotFound,
    PluginContext,
    SdkError,
    cancel,
    now_ms,
    xid,
)
from sdk.yamldoc import YamlError, load_yaml

from .definition import (
    ARCHIVED,
    LAST_ACTIVE,
    Definition,
    DefinitionError,
    backoff_ms,
    message_session,
    parse,
)

__all__ = ["MIGRATIONS", "Engine", "Instance", "TransitionResult", "WorkflowInstance"]

log = logging.getLogger("aman.plugin.workflows")

MIGRATIONS = [
    Migration(
        version=1,
        sql="""
        CREATE TABLE workflow_instances (
            id TEXT PRIMARY KEY,
            workflow_name TEXT NOT NULL,
            workflow_key TEXT NOT NULL,
            current_state TEXT NOT NULL,
            last_active_state TEXT,
            total_retry_count INTEGER NOT NULL,
            session_retry_count INTEGER NOT NULL,
            state_entered_at INTEGER NOT NULL,
            active_state TEXT NOT NULL,
            active_started_at INTEGER NOT NULL,
            remaining_ms TEXT NOT NULL,
            last_user_event_at INTEGER,
            data TEXT NOT NULL,
            partial_rollback INTEGER NOT NULL,
            has_pending_retry INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            due_at INTEGER,
            retry_at INTEGER,
            retry_event TEXT
        );
        CREATE INDEX workflow_instances_key ON workflow_instances (workflow_key, current_state);
        CREATE INDEX workflow_instances_due ON workflow_instances (due_at) WHERE due_at IS NOT NULL;
        CREATE INDEX workflow_instances_retry ON workflow_instances (retry_at)
            WHERE retry_at IS NOT NULL;
        """,
    )
]
_COLUMNS = (
    "id",
    "workflow_name",
    "workflow_key",
    "current_state",
    "last_active_state",
    "total_retry_count",
    "session_retry_count",
    "state_entered_at",
    "active_state",
    "active_started_at",
    "remaining_ms",
    "last_user_event_at",
    "data",
    "partial_rollback",
    "has_pending_retry",
    "created_at",
    "updated_at",
    "due_at",
    "retry_at",
    "retry_event",
)
_JSON = ("remaining_ms", "data", "retry_event")
_BOOL = ("partial_rollback", "has_pending_retry")
CONTROL_SOURCE = "workflow:control"


# --- models ------------------------------------------------------------------------------------


@frozen(kw_only=True)
class WorkflowInstance:
    """The WorkflowInstance object of http-api §8 (also what guards and pipelines receive)."""

    id: str
    workflow_name: str
    current_state: str
    last_active_state: str | None
    total_retry_count: int
    session_retry_count: int
    state_entered_at: int
    timeout_clock: dict[str, Any]
    last_user_event_at: int | None
    data: Any
    partial_rollback: bool
    has_pending_retry: bool
    created_at: int
    updated_at: int


@frozen(kw_only=True)
class TransitionResult:
    """The TransitionResult object of http-api §8."""

    instance_id: str
    from_state: str
    to_state: str
    transitioned: bool
    reason: str


@define(kw_only=True)
class Instance:
    """An instance as stored (mutable); ``due_at``, ``retry_at`` and ``retry_event`` are private:
    the deadline of the current state, the time of the next automatic retry and the event to
    feed again after it."""

    id: str
    workflow_name: str
    current_state: str
    last_active_state: str | None = None
    total_retry_count: int = 0
    session_retry_count: int = 0
    state_entered_at: int
    active_state: str
    active_started_at: int
    remaining_ms: dict[str, int] = Factory(dict)
    last_user_event_at: int | None = None
    data: Any = None
    partial_rollback: bool = False
    has_pending_retry: bool = False
    created_at: int
    updated_at: int
    due_at: int | None = None
    retry_at: int | None = None
    retry_event: dict[str, Any] | None = None

    def public(self) -> WorkflowInstance:
        return WorkflowInstance(
            id=self.id,
            workflow_name=self.workflow_name,
            current_state=self.current_state,
            last_active_state=self.last_active_state,
            total_retry_count=self.total_retry_count,
            session_retry_count=self.session_retry_count,
            state_entered_at=self.state_entered_at,
            timeout_clock={
                "active_state": self.active_state,
                "active_started_at": self.active_started_at,
                "remaining_ms": dict(self.remaining_ms),
            },
            last_user_event_at=self.last_user_event_at,
            data=self.data,
            partial_rollback=self.partial_rollback,
            has_pending_retry=self.has_pending_retry,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def row(self) -> tuple[Any, ...]:
        values = {name: getattr(self, name) for name in _COLUMNS if name != "workflow_key"}
        values["workflow_key"] = self.workflow_name.casefold()
        for name in _JSON:
            values[name] = json.dumps(values[name])
        for name in _BOOL:
            values[name] = int(values[name])
        return tuple(values[name] for name in _COLUMNS)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Instance:
        values = dict(row)
        values.pop("workflow_key")
        for name in _JSON:
            values[name] = json.loads(values[name]) if values[name] is not None else None
        for name in _BOOL:
            values[name] = bool(values[name])
        return cls(**values)


# --- the engine ----------------------------------------------------------------------------------


class Engine:
    """Definitions and instances of one kernel."""

    def __init__(self, ctx: PluginContext) -> None:
        self._ctx = ctx
        self._builtin = message_session()
        self._files: list[tuple[Path, Any]] = []
        self._defs: dict[str, Definition] = {}
        self._defs_key: object = None
        #: (where, reason) of every definition the last (re)load rejected.
        self.rejected: list[tuple[str, str]] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._auto_retrying: set[str] = set()
        #: The time now in ms (tests may replace it).
        self.clock: Callable[[], int] = now_ms

    # --- start and stop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the files of ``workflows.dir`` and start the poller (its first check runs at
        once, so timeouts that fell due while the runtime was down fire at start). The files
        are read and parsed in a worker thread: a big one must not stall the event loop."""
        await self._ctx.plugins.run_sync(self._ctx.name, self.load_files)
        self.definitions()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="aman-workflows")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # the poller never dies
                log.exception("workflow timeout check failed")
            await asyncio.sleep(self._ctx.settings.get("workflows.timeout_poll_ms") / 1000)

    # --- definitions ---------------------------------------------------------------------------

    def load_files(self) -> None:
        """Read ``*.yaml``/``*.yml`` of ``workflows.dir`` in path order (validated with the rest)."""
        self._files = []
        directory = self._ctx.settings.resolve_path("workflows.dir")
        if not directory.is_dir():
            return
        paths = sorted(
            p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
        )
        for path in paths:
            try:
                raw = load_yaml(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, YamlError) as exc:
                raw = DefinitionError(f"not valid YAML: {exc}")
            self._files.append((path, raw))
        self._defs_key = None

    def definitions(self) -> dict[str, Definition]:
        """Every loaded definition by lower-cased name: the built-in one, then the running
        plugins' (``register_workflows``) in load order, then the files in path order. Rebuilt
        whenever the plugins' workflows or guards changed, so plugins started after this one, or
        enabled later, are picked up; a later definition with a taken name is a duplicate."""
        plugins = self._ctx.plugins.contributions("register_workflows")
        guards = self._ctx.plugins.contributions("register_guards")
        key = (
            tuple((c.plugin, id(c.item)) for c in plugins),
            tuple(str(c.item[0]) for c in guards),
            len(self._files),
        )
        if key == self._defs_key:
            return self._defs
        guard_names = [str(c.item[0]) for c in guards]
        defs: dict[str, Definition] = {self._builtin.key: self._builtin}
        rejected: list[tuple[str, str]] = []

        def add(where: str, raw: Any, origin: str, path: str | None) -> None:
            try:
                if isinstance(raw, DefinitionError):
                    raise raw
                definition = parse(raw, origin=origin, path=path, guards=guard_names)
                if definition.key in defs:
                    raise DefinitionError(f"duplicate workflow name: {definition.name}")
            except DefinitionError as exc:
                # formats §3.5 also raises a warning notification (category workflow); not
                # yet: the files are read before the notifications plugin starts (decisions.md)
                log.error("workflow definition from %s rejected: %s", where, exc)
                rejected.append((where, str(exc)))
                return
            defs[definition.key] = definition

        for c in plugins:
            add(f"plugin {c.plugin}", c.item, "plugin", None)
        for path, raw in self._files:
            add(str(path), raw, "file", str(path))
        self._defs, self._defs_key, self.rejected = defs, key, rejected
        return defs

    def definition(self, name: str) -> Definition:
        found = self.definitions().get(name.casefold())
        if found is None:
            raise NotFound(f"workflow not found: {name}")
        return found

    def _definition_of(self, inst: Instance) -> Definition:
        found = self.definitions().get(inst.workflow_name.casefold())
        if found is None:
            raise Conflict(f"workflow {inst.workflow_name} is not loaded")
        return found

    # --- instances -----------------------------------------------------------------------------

    async def get(self, instance_id: str) -> Instance:
        rows = await self._ctx.store.fetchall(
            f"SELECT {', '.join(_COLUMNS)} FROM workflow_instances WHERE id = ?", (instance_id,)
        )
        if not rows:
            raise NotFound(f"workflow instance not found: {instance_id}")
        return Instance.from_row(rows[0])

    async def list(
        self, *, workflow: str | None = None, state: str | None = None, limit: int = 1000
    ) -> list[Instance]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM workflow_instances WHERE 1 = 1"
        params: list[Any] = []
        if workflow is not None:
            sql += " AND workflow_key = ?"
            params.append(workflow.casefold())
        if state is not None:
            sql += " AND current_state = ?"
            params.append(state.strip().upper())
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [Instance.from_row(row) for row in await self._ctx.store.fetchall(sql, params)]

    async def create(self, name: str, data: Any = None) -> Instance:
        """A new instance in the initial state (event ``CREATE``, ``from_state`` null)."""
        definition = self.definition(name)
        now = self.clock()
        state = definition.initial_state
        inst = Instance(
            id=xid(now / 1000),
            workflow_name=definition.name,
            current_state=state,
            state_entered_at=now,
            active_state=state,
            active_started_at=now,
            data=data,
            created_at=now,
            updated_at=now,
        )
        if (timeout := definition.timeouts.get(state)) is not None:
            inst.due_at = now + timeout.timeout_ms
        await self._save(inst)
        await self._publish(inst, definition, None, state, "CREATE", "Event")
        return inst

    async def send(
        self, instance_id: str, name: str, *, event: Event, user: bool = True
    ) -> TransitionResult:
        """Feed event ``name`` to an instance (formats §3.4)."""
        async with self._lock(instance_id):
            inst = await self.get(instance_id)
            return await self._process(inst, self._definition_of(inst), name, event, user=user)

    async def retry(self, instance_id: str) -> TransitionResult:
        """``POST /workflow-instance/{id}/retry``: the retry rules of http-api §8."""
        async with self._lock(instance_id):
            inst = await self.get(instance_id)
            definition = self._definition_of(inst)
            if inst.current_state != definition.error_state:
                raise Conflict(
                    f"workflow instance {inst.id} is not in its error state"
                    f" (current state {inst.current_state})"
                )
            inst.last_user_event_at = self.clock()
            return await self._retry(inst, definition)

    def control_event(self, name: str, payload: Mapping[str, Any]) -> Event:
        """The event of a control request (source ``workflow:control``), not published."""
        return self._ctx.bus.build(name, dict(payload), source=CONTROL_SOURCE)

    # --- processing ----------------------------------------------------------------------------

    async def _process(
        self, inst: Instance, definition: Definition, name: str, event: Event, *, user: bool
    ) -> TransitionResult:
        name = name.strip().upper()
        current = inst.current_state
        if definition.is_final(current):
            raise Conflict(f"workflow instance {inst.id} is in final state {current}")
        if user:
            inst.last_user_event_at = self.clock()
        if name == "RETRY" and current == definition.error_state:
            return await self._retry(inst, definition)
        transition = definition.find(current, name)
        if transition is None:
            if name == "CANCEL" and current == definition.error_state:
                if "CANCELLED" in definition.states:
                    return await self._move(inst, definition, "CANCELLED", name, "Event")
                return await self._stay(inst, "GuardRejected")
            raise Conflict(
                f"workflow {definition.name} has no transition from {current} on event {name}"
            )
        if transition.guard is not None and not await self._guard(
            transition.guard, inst, definition, event
        ):
            if transition.on_fail is not None:
                return await self._move(inst, definition, transition.on_fail, name, "GuardRejected")
            return await self._stay(inst, "GuardRejected")
        if transition.action is not None and not await self._action(transition.action, inst, event):
            target = transition.on_action_failure or definition.error_state
            if target is None:
                return await self._stay(inst, "ActionFailed")
            return await self._move(inst, definition, target, name, "ActionFailed", failed=event)
        return await self._move(inst, definition, transition.to, name, "Event")

    async def _stay(self, inst: Instance, reason: str) -> TransitionResult:
        inst.updated_at = self.clock()
        await self._save(inst)
        state = inst.current_state
        return TransitionResult(
            instance_id=inst.id, from_state=state, to_state=state, transitioned=False, reason=reason
        )

    async def _retry(self, inst: Instance, definition: Definition) -> TransitionResult:
        if inst.last_active_state is None:
            raise Conflict(f"workflow instance {inst.id} has no state to return to")
        inst.retry_at = None
        recovery = definition.recovery
        if inst.total_retry_count >= recovery.max_retry_count:
            if recovery.on_retry_failure == "archive":
                return await self._move(inst, definition, ARCHIVED, "RETRY", "RetryExceeded")
            return await self._stay(inst, "RetryExceeded")
        inst.total_retry_count += 1
        inst.session_retry_count += 1
        return await self._move(inst, definition, inst.last_active_state, "RETRY", "Event")

    async def _move(
        self,
        inst: Instance,
        definition: Definition,
        target: str,
        event_name: str,
        reason: str,
        *,
        failed: Event | None = None,
    ) -> TransitionResult:
        """Take a transition: clocks, error-state bookkeeping, persist, publish."""
        if target == LAST_ACTIVE:
            if inst.last_active_state is None:
                raise Conflict(f"workflow instance {inst.id} has no state to return to")
            target = inst.last_active_state
        now = self.clock()
        source = inst.current_state
        if inst.due_at is not None:  # pause the clock of the state left (a timeout consumed it)
            if reason == "Timeout":
                inst.remaining_ms.pop(source, None)
            else:
                inst.remaining_ms[source] = max(0, inst.due_at - now)
        error = definition.error_state
        if source == error and target != error:
            inst.has_pending_retry, inst.retry_at = False, None
            if inst.id not in self._auto_retrying:
                inst.retry_event = None
        entering_error = target == error and source != error
        if entering_error:
            inst.last_active_state = source
            inst.has_pending_retry = True
            if inst.id not in self._auto_retrying:  # a failed automatic retry is the same stay
                inst.session_retry_count = 0
        inst.current_state = target
        inst.state_entered_at = inst.updated_at = now
        inst.active_state, inst.active_started_at = target, now
        timeout = definition.timeouts.get(target)
        if timeout is not None and not definition.is_final(target):
            inst.due_at = now + inst.remaining_ms.pop(target, timeout.timeout_ms)
        else:
            inst.due_at = None
        recovery = definition.recovery
        if (
            entering_error
            and failed is not None
            and inst.session_retry_count < recovery.auto_retry_count
        ):
            delay = backoff_ms(recovery.retry_backoff, inst.session_retry_count + 1)
            inst.retry_at = now + delay
            inst.retry_event = {
                "event": event_name,
                "event_type": failed.event_type,
                "source": failed.source,
                "payload": failed.payload,
            }
        elif entering_error:
            inst.retry_event = None
        await self._save(inst)
        await self._publish(inst, definition, source, target, event_name, reason)
        return TransitionResult(
            instance_id=inst.id,
            from_state=source,
            to_state=target,
            transitioned=True,
            reason=reason,
        )

    async def _guard(self, name: str, inst: Instance, definition: Definition, event: Event) -> bool:
        if name == "has_permission":
            payload = event.payload
            return isinstance(payload, Mapping) and payload.get("has_permission") is True
        if name == "max_retry":
            return inst.total_retry_count < definition.recovery.max_retry_count
        guard = self._named("register_guards").get(name)
        if guard is None:  # its plugin stopped: nothing allows the transition
            log.warning("guard %s is not available; transition rejected", name)
            return False
        try:
            result = guard(inst.public(), event)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("guard %s failed; transition rejected", name)
            return False
        return bool(result)

    async def _action(self, action: tuple[str, str], inst: Instance, event: Event) -> bool:
        """Run a transition's action; false when it failed (raised, timed out, is missing)."""
        kind, name = action
        limit = self._ctx.settings.get("workflows.action_timeout_sec")
        try:
            async with asyncio.timeout(limit):
                if kind == "skill":
                    runner = self._ctx.stash.get(SKILL_RUNNER)
                    if runner is None:
                        raise LookupError("no skills runner is available")
                    await runner.run(name, event)
                else:
                    pipeline = self._named("register_pipelines").get(name)
                    if pipeline is None:
                        raise LookupError(f"unknown pipeline: {name}")
                    if inspect.iscoroutinefunction(pipeline):
                        result = await pipeline(inst.public(), event)
                    else:
                        result = await asyncio.to_thread(pipeline, inst.public(), event)
                        if inspect.isawaitable(result):
                            result = await result
                    if isinstance(result, Mapping) and result.get("partial_rollback") is True:
                        inst.partial_rollback = True
        except Exception as exc:  # noqa: BLE001 - any failure of the action is ActionFailed
            if getattr(exc, "partial_rollback", False) is True:
                inst.partial_rollback = True
            log.warning(
                "workflow instance %s: action %s %s failed: %s: %s",
                inst.id,
                kind,
                name,
                type(exc).__name__,
                exc,
            )
            return False
        return True

    def _named(self, hook: str) -> dict[str, Any]:
        return {str(c.item[0]): c.item[1] for c in self._ctx.plugins.contributions(hook)}

    # --- timeouts and automatic retries --------------------------------------------------------

    async def check(self) -> None:
        """Fire due automatic retries and timeouts (one poller tick)."""
        now = self.clock()
        rows = await self._ctx.store.fetchall(
            "SELECT id FROM workflow_instances WHERE due_at <= ? OR retry_at <= ? ORDER BY id",
            (now, now),
        )
        for row in rows:
            try:
                await self._check_one(row["id"])
            except Exception:  # one instance never stops the others
                log.exception("workflow instance %s: timeout or retry failed", row["id"])

    async def _check_one(self, instance_id: str) -> None:
        async with self._lock(instance_id):
            inst = await self.get(instance_id)
            definition = self.definitions().get(inst.workflow_name.casefold())
            if definition is None:
                return  # its plugin is not running (yet): checked again later
            now = self.clock()
            if inst.retry_at is not None and inst.retry_at <= now:
                await self._auto_retry(inst, definition)
                return
            if inst.due_at is None or inst.due_at > now:
                return
            last = inst.last_user_event_at or inst.created_at
            if now - last < self._ctx.settings.get("workflows.timeout_defer_ms"):
                return
            timeout = definition.timeouts.get(inst.current_state)
            if timeout is None or definition.is_final(inst.current_state):
                inst.due_at = None
                await self._save(inst)
                return
            if timeout.on_timeout == LAST_ACTIVE and inst.last_active_state is None:
                log.warning("workflow instance %s: timeout has no state to return to", inst.id)
                inst.due_at = None
                inst.remaining_ms.pop(inst.current_state, None)
                await self._save(inst)
                return
            if timeout.on_timeout_alert:
                await self._alert(inst, definition)
            await self._move(inst, definition, timeout.on_timeout, "TIMEOUT", "Timeout")

    async def _alert(self, inst: Instance, definition: Definition) -> None:
        """``on_timeout_alert``: a warning notification (http-api §8), when notifications run."""
        message = f"{definition.name} {inst.id} {inst.current_state}"  # the table of §13
        log.warning("workflow state timed out: %s", message)
        notifier = self._ctx.stash.get(NOTIFIER)
        if notifier is not None:
            try:
                await notifier.notify(
                    severity="warning",
                    category="workflow",
                    title="Workflow state timed out",
                    body=message,
                    source="workflows",
                )
            except Exception:
                log.exception("workflow timeout alert failed")

    async def _auto_retry(self, inst: Instance, definition: Definition) -> None:
        """Automatic retry: the retry rules, then the failed event is fed again; if its action
        fails again the instance is back in the error state within the same stay."""
        pending = inst.retry_event
        if inst.current_state != definition.error_state:
            inst.retry_at, inst.retry_event = None, None
            await self._save(inst)
            return
        self._auto_retrying.add(inst.id)
        try:
            result = await self._retry(inst, definition)
            if not result.transitioned or result.to_state == ARCHIVED or pending is None:
                return
            event = self._ctx.bus.build(
                pending["event_type"], pending["payload"], source=pending["source"]
            )
            try:
                await self._process(inst, definition, pending["event"], event, user=False)
            except SdkError as exc:
                log.warning("workflow instance %s: automatic retry: %s", inst.id, exc)
        finally:
            self._auto_retrying.discard(inst.id)

    # --- storage and events --------------------------------------------------------------------

    async def _save(self, inst: Instance) -> None:
        row = inst.row()
        sql = (
            f"INSERT OR REPLACE INTO workflow_instances ({', '.join(_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(_COLUMNS))})"
        )
        await self._ctx.store.write(lambda c: c.execute(sql, row))

    async def _publish(
        self,
        inst: Instance,
        definition: Definition,
        source: str | None,
        target: str,
        event: str,
        reason: str,
    ) -> None:
        payload = {
            "instance_id": inst.id,
            "workflow_name": definition.name,
            "from_state": source,
            "to_state": target,
            "event": event,
            "reason": reason,
        }
        try:
            await self._ctx.bus.publish(
                "workflow_state_changed",
                payload,
                source=f"workflow:{definition.name}"[:128],
                delivery="at_least_once",
            )
        except Exception:  # the transition is committed; a refused event does not undo it
            log.exception("workflow instance %s: workflow_state_changed not published", inst.id)

    def _lock(self, instance_id: str) -> asyncio.Lock:
        lock = self._locks.get(instance_id)
        if lock is None:
            lock = self._locks[instance_id] = asyncio.Lock()
        return lock
