"""Cron expressions (formats §6): parsing, validation and firing times in a time zone.

The parser here decides what an expression means: the 5- and 6-field forms, the aliases, month
and weekday names, ``?``, ranges and steps, day-of-week 0 and 7 as Sunday, and the rule that a
day matches either restricted day field when both are restricted (Vixie cron). It reduces every
field to an explicit set of values, and croniter iterates that normalised form in wall-clock
time, so croniter never interprets the user's text. Time zones are applied on top: wall-clock
times that do not exist (a daylight-saving jump forward) are skipped, and times that occur twice
fire once, at their first occurrence (formats §6.3).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import frozen

__all__ = [
    "NEVER_FIRES_YEARS",
    "CronError",
    "CronExpression",
    "TooFrequent",
    "UnknownZone",
    "check",
    "parse",
    "rfc3339",
    "zone",
]

#: An expression with no firing time within this many years "never fires" (formats §6.4).
NEVER_FIRES_YEARS = 8
#: How many coming firings the minimum-interval check looks at (formats §6.4).
INTERVAL_SAMPLE = 100

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    name: i
    for i, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}  # spelt out: calendar.month_abbr follows the locale
_WEEKDAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
# (name, minimum, maximum, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)
_SEPARATORS = re.compile(r"[ \t]+")
# Quartz syntax that is not supported: L, W, LW, 5L, 15W, L-3 (``#`` is caught on its own).
_QUARTZ = re.compile(r"(?i)\d*L|\d*W|LW|L-\d+")
_ONE_SECOND = timedelta(seconds=1)


class CronError(ValueError):
    """An invalid expression; ``str(error)`` is the whole message of formats §6.4."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid cron expression '{text}': {reason}")
        self.text, self.reason = text, reason


class UnknownZone(ValueError):
    """Not an IANA time zone name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown time zone: {name}")
        self.name = name


class TooFrequent(ValueError):
    """Two of the next firings are closer than the minimum interval (formats §6.4)."""

    def __init__(self, text: str, seconds: int) -> None:
        super().__init__(f"cron expression '{text}' fires more often than every {seconds} s")
        self.text, self.seconds = text, seconds


@frozen
class CronExpression:
    """A parsed expression: the set of values of each field, Sunday = 0."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool  # day-of-month is neither ``*`` nor ``?``
    weekdays_restricted: bool  # day-of-week is neither ``*`` nor ``?``

    def croniter_form(self) -> str:
        """The normalised 6-field form (seconds first) handed to croniter: explicit value lists,
        ``*`` only for an unrestricted field."""

        def render(values: frozenset[int], full: range) -> str:
            return "*" if values == set(full) else ",".join(str(v) for v in sorted(values))

        days = ",".join(str(v) for v in sorted(self.days)) if self.days_restricted else "*"
        weekdays = (
            ",".join(str(v) for v in sorted(self.weekdays)) if self.weekdays_restricted else "*"
        )
        return " ".join(
            [
                render(self.seconds, range(60)),
                render(self.minutes, range(60)),
                render(self.hours, range(24)),
                days,
                render(self.months, range(1, 13)),
                weekdays,
            ]
        )

    # --- wall-clock iteration (croniter) ----------------------------------------------------

    def _walls(self, start: datetime, *, backwards: bool = False) -> Iterator[datetime]:
        """Matching wall-clock times strictly after (or before) the naive ``start``."""
        from croniter import croniter  # imported when first needed: keeps start-up short
        from croniter.croniter import CroniterBadDateError

        it = croniter(self.croniter_form(), start, second_at_beginning=True, day_or=True)
        step = it.get_prev if backwards else it.get_next
        try:
            while True:
                yield step(datetime)
        except CroniterBadDateError:
            return

    # --- instants in a zone -----------------------------------------------------------------

    def fire_times(self, after: datetime, tz: ZoneInfo) -> Iterator[datetime]:
        """The firings strictly after ``after`` (aware), in order, as aware UTC datetimes, for at
        most :data:`NEVER_FIRES_YEARS` years."""
        after = after.astimezone(UTC)  # compare instants, never wall times of one zone
        start = after.astimezone(tz).replace(tzinfo=None, microsecond=0, fold=0)
        limit = start + timedelta(days=366 * NEVER_FIRES_YEARS)
        while True:
            for wall in self._walls(start):
                if wall > limit:
                    return
                if not _exists(wall, tz):
                    start = _gap(wall, tz)[1] - _ONE_SECOND  # go on at the end of the jump
                    break
                fired = _first_occurrence(wall, tz)  # a repeated time fires once, the first time
                if fired > after:
                    yield fired
            else:
                return

    def next_after(self, instant: datetime, tz: ZoneInfo) -> datetime | None:
        """The first firing strictly after ``instant``, or None (see :meth:`fire_times`)."""
        return next(self.fire_times(instant, tz), None)

    def latest_at_or_before(self, instant: datetime, tz: ZoneInfo) -> datetime | None:
        """The last firing at or before ``instant`` (aware), as an aware UTC datetime; None if
        there is none within :data:`NEVER_FIRES_YEARS` years."""
        instant = instant.astimezone(UTC)
        local = instant.astimezone(tz)
        start = local.replace(tzinfo=None, microsecond=0, fold=0)
        if local.fold:  # the second pass of a repeated hour: its wall times fired in the first
            first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
            assert first is not None and second is not None
            start += first - second
        start += _ONE_SECOND  # croniter's start is exclusive
        limit = start - timedelta(days=366 * NEVER_FIRES_YEARS)
        while True:
            for wall in self._walls(start, backwards=True):
                if wall < limit:
                    return None
                if not _exists(wall, tz):
                    start = _gap(wall, tz)[0]  # go on before the jump
                    break
                fired = _first_occurrence(wall, tz)
                if fired <= instant:
                    return fired
            else:
                return None

    def firings(self, after: datetime, tz: ZoneInfo, count: int) -> list[datetime]:
        """Up to ``count`` firings strictly after ``after``."""
        return list(itertools.islice(self.fire_times(after, tz), count))


# --- parsing ------------------------------------------------------------------------------------


def parse(text: str) -> CronExpression:
    """Parse an expression; raise :class:`CronError` with a reason of formats §6.4."""
    body = text.strip()
    fields = _SEPARATORS.split(body) if body else []
    if fields and fields[0].startswith("@"):
        alias = fields[0].lower()
        if alias not in ALIASES:
            raise CronError(text, f"unsupported alias '{fields[0]}'")
        if len(fields) != 1:
            raise CronError(text, f"expected 5 or 6 fields, got {len(fields)}")
        fields = ALIASES[alias].split()
    if len(fields) not in (5, 6):
        raise CronError(text, f"expected 5 or 6 fields, got {len(fields)}")
    if len(fields) == 5:
        fields = ["0", *fields]
    values = [_field(text, raw, spec) for raw, spec in zip(fields, _FIELDS, strict=True)]
    weekdays = frozenset(v % 7 for v in values[5])
    return CronExpression(
        text=text,
        seconds=values[0],
        minutes=values[1],
        hours=values[2],
        days=values[3],
        months=values[4],
        weekdays=weekdays,
        days_restricted=fields[3] not in ("*", "?"),
        weekdays_restricted=fields[5] not in ("*", "?"),
    )


def _field(text: str, raw: str, spec: tuple[str, int, int, dict[str, int]]) -> frozenset[int]:
    found: set[int] = set()
    for item in raw.split(","):
        if not item:
            raise CronError(text, f"unsupported syntax '{raw}'")
        found |= _item(text, item, spec)
    return frozenset(found)


def _item(text: str, item: str, spec: tuple[str, int, int, dict[str, int]]) -> set[int]:
    name, low, high, _names = spec
    if "#" in item:
        raise CronError(text, f"unsupported syntax '{item}'")
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isascii() or not step_text.isdigit() or int(step_text) < 1:
            raise CronError(text, f"invalid step in {name} field")
        step = int(step_text)
    if base == "?":
        if name not in ("day-of-month", "day-of-week") or slash:
            raise CronError(text, f"unsupported syntax '{item}'")
        return set(range(low, high + 1))
    if base == "*":
        first, last = low, high
    elif "-" in base and not _QUARTZ.fullmatch(base):
        a, _, b = base.partition("-")
        if not a or not b or "-" in b:
            raise CronError(text, f"invalid range {base} in {name} field")
        first, last = _value(text, a, spec, item), _value(text, b, spec, item)
        if first > last:
            raise CronError(text, f"invalid range {base} in {name} field")
    else:
        first = _value(text, base, spec, item)
        last = high if slash else first
    return set(range(first, last + 1, step))


def _value(text: str, token: str, spec: tuple[str, int, int, dict[str, int]], item: str) -> int:
    name, low, high, names = spec
    if token.upper() in names:
        return names[token.upper()]
    if _QUARTZ.fullmatch(token):
        raise CronError(text, f"unsupported syntax '{item}'")
    if token.isascii() and token.isdigit():
        value = int(token)
        if not low <= value <= high:
            raise CronError(text, f"value {value} out of range {low}-{high} in {name} field")
        return value
    if token.isascii() and token.isalpha():
        raise CronError(text, f"unknown name '{token}' in {name} field")
    raise CronError(text, f"unsupported syntax '{item}'")


# --- time zones -----------------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raise :class:`UnknownZone` for anything else."""
    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        raise UnknownZone(name)
    if name in ("localtime", "posixrules"):  # files of the host's database, not zone names
        raise UnknownZone(name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZone(name) from None


def rfc3339(instant: datetime, tz: ZoneInfo) -> str:
    """``2024-11-28T02:00:00+01:00``: the instant in ``tz`` with its offset, to the second."""
    return instant.astimezone(tz).isoformat(timespec="seconds")


def _first_occurrence(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant (UTC) of an existing wall time; a repeated one's first occurrence."""
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _exists(wall: datetime, tz: ZoneInfo) -> bool:
    """Whether a naive wall-clock time exists in ``tz`` (it is not inside a jump forward)."""
    aware = wall.replace(tzinfo=tz, fold=0)
    return aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


def _gap(wall: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """For a wall time inside a jump forward: the gap's first missing wall time and the first
    wall time after it (both naive)."""
    before = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)  # the later offset: before the jump
    after = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)  # the earlier offset: after it
    offset = before.astimezone(tz).utcoffset()
    lo, hi = before, after  # offset(lo) is the old one, offset(hi) the new one
    while hi - lo > _ONE_SECOND:
        mid = lo + (hi - lo) / 2
        mid = mid.replace(microsecond=0)
        if mid.astimezone(tz).utcoffset() == offset:
            lo = mid
        else:
            hi = mid
    start = (lo.astimezone(tz) + _ONE_SECOND).replace(tzinfo=None)
    end = hi.astimezone(tz).replace(tzinfo=None)
    return start, end


# --- the checks of /cron/add and /cron/{id}/update ------------------------------------------------


def check(
    text: str, tz_name: str, *, min_interval_sec: int, now: datetime
) -> tuple[CronExpression, ZoneInfo]:
    """Validate an expression in a zone as formats §6.4 says, in the order of the add errors of
    http-api §19: the syntax, the time zone, "never fires", then the minimum interval."""
    expression = parse(text)
    tz = zone(tz_name)
    coming = expression.firings(now, tz, INTERVAL_SAMPLE if min_interval_sec > 1 else 1)
    if not coming:
        raise CronError(text, "never fires")
    for earlier, later in itertools.pairwise(coming):
        if (later - earlier).total_seconds() < min_interval_sec:
            raise TooFrequent(text, min_interval_sec)
    return expression, tz
