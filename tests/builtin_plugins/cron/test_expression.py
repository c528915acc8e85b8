"""Cron expressions (formats §6): forms, fields, validation reasons, time zones and DST."""

from __future__ import annotations

import calendar
import random
from datetime import UTC, datetime, timedelta

import pytest

from builtin_plugins.cron.expression import (
    CronError,
    TooFrequent,
    UnknownZone,
    check,
    parse,
    rfc3339,
    zone,
)

BERLIN, NEW_YORK, UTC_ZONE = zone("Europe/Berlin"), zone("America/New_York"), zone("UTC")
NOW = datetime(2024, 1, 1, 0, 0, tzinfo=UTC)  # a Monday


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def times(text: str, after: datetime, count: int, tz=UTC_ZONE) -> list[str]:
    return [rfc3339(t, tz) for t in parse(text).firings(after, tz, count)]


def reason(text: str) -> str:
    with pytest.raises(CronError) as info:
        check(text, "UTC", min_interval_sec=1, now=NOW)
    assert str(info.value) == f"invalid cron expression '{text}': {info.value.reason}"
    return info.value.reason


# --- formats §6.5: the examples ----------------------------------------------------------------


def test_every_five_minutes():
    assert times("*/5 * * * *", utc(2024, 1, 1, 0, 2, 30), 3) == [
        "2024-01-01T00:05:00+00:00",
        "2024-01-01T00:10:00+00:00",
        "2024-01-01T00:15:00+00:00",
    ]


def test_nine_on_weekdays():
    friday_noon = utc(2024, 1, 5, 12)
    assert times("0 9 * * MON-FRI", friday_noon, 3) == [
        "2024-01-08T09:00:00+00:00",
        "2024-01-09T09:00:00+00:00",
        "2024-01-10T09:00:00+00:00",
    ]


def test_half_past_two_on_the_first():
    assert times("30 2 1 * *", NOW, 3) == [
        "2024-01-01T02:30:00+00:00",
        "2024-02-01T02:30:00+00:00",
        "2024-03-01T02:30:00+00:00",
    ]


def test_first_fifteenth_and_sundays():
    assert times("0 0 1,15 * 0", NOW, 6) == [
        "2024-01-07T00:00:00+00:00",
        "2024-01-14T00:00:00+00:00",
        "2024-01-15T00:00:00+00:00",
        "2024-01-21T00:00:00+00:00",
        "2024-01-28T00:00:00+00:00",
        "2024-02-01T00:00:00+00:00",
    ]


def test_hourly():
    assert times("@hourly", utc(2024, 1, 1, 0, 30), 2) == [
        "2024-01-01T01:00:00+00:00",
        "2024-01-01T02:00:00+00:00",
    ]


def test_every_five_seconds_in_the_six_field_form():
    assert times("0/5 * * * * *", utc(2024, 1, 1, 0, 0, 58), 3) == [
        "2024-01-01T00:01:00+00:00",
        "2024-01-01T00:01:05+00:00",
        "2024-01-01T00:01:10+00:00",
    ]


# --- formats §6.1, §6.2: forms and fields ------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "standard"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_aliases(alias, standard):
    a, b = parse(alias), parse(standard)
    assert (a.seconds, a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.seconds, b.minutes, b.hours, b.days, b.months, b.weekdays
    )
    assert times(alias, NOW, 3) == times(standard, NOW, 3)


def test_five_fields_fire_at_second_zero_and_six_fields_start_with_seconds():
    assert parse("* * * * *").seconds == {0}
    six = parse("15,45 30 * * * *")
    assert (six.seconds, six.minutes) == ({15, 45}, {30})


def test_spaces_tabs_and_surrounding_whitespace():
    assert parse("  0\t9 *   * MON \n").weekdays == {1}


@pytest.mark.parametrize("sunday", ["0", "7", "SUN", "sun", "Sun"])
def test_day_of_week_zero_and_seven_are_sunday(sunday):
    assert parse(f"0 0 * * {sunday}").weekdays == {0}
    assert times(f"0 0 * * {sunday}", NOW, 2) == ["2024-01-07T00:00:00+00:00", "2024-01-14T00:00:00+00:00"]


def test_names_are_case_insensitive():
    assert parse("0 0 * jan,Feb,MAR mon-Wed").months == {1, 2, 3}
    assert parse("0 0 * * mon-Wed").weekdays == {1, 2, 3}
    assert parse("0 0 * DEC SAT").months == {12}


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("*", set(range(60))),
        ("5", {5}),
        ("1,2,3", {1, 2, 3}),
        ("10-12", {10, 11, 12}),
        ("*/15", {0, 15, 30, 45}),
        ("10-30/10", {10, 20, 30}),
        ("50/3", {50, 53, 56, 59}),
        ("1-3,7,*/30", {0, 1, 2, 3, 7, 30}),
        ("*/100", {0}),
    ],
)
def test_minute_items(field, values):
    assert parse(f"{field} * * * *").minutes == values


def test_ranges_and_steps_of_the_day_of_week_run_up_to_seven():
    assert parse("0 0 * * 5-7").weekdays == {5, 6, 0}
    assert parse("0 0 * * 1/3").weekdays == {1, 4, 0}
    assert parse("0 0 * * */2").weekdays == {0, 2, 4, 6}
    assert parse("0 0 * * 0-7").weekdays == set(range(7))


def test_question_mark_is_a_star_for_the_day_fields():
    q, star = parse("0 0 ? * ?"), parse("0 0 * * *")
    assert (q.days, q.weekdays, q.days_restricted, q.weekdays_restricted) == (
        star.days, star.weekdays, False, False
    )
    assert times("0 0 ? * MON", NOW, 2) == ["2024-01-08T00:00:00+00:00", "2024-01-15T00:00:00+00:00"]


def test_days_either_field_matches_when_both_are_restricted():
    # 13th or Friday, January 2024: Fridays are the 5th, 12th, 19th, 26th
    assert [t[8:10] for t in times("0 0 13 1 FRI", NOW, 5)] == ["05", "12", "13", "19", "26"]


def test_days_only_the_restricted_field_decides():
    assert [t[8:10] for t in times("0 0 13 1 *", NOW, 1)] == ["13"]
    assert [t[8:10] for t in times("0 0 * 1 FRI", NOW, 4)] == ["05", "12", "19", "26"]
    assert [t[8:10] for t in times("0 0 ? 1 FRI", NOW, 4)] == ["05", "12", "19", "26"]


def test_a_stepped_star_restricts_its_field():
    # Only `*` and `?` leave a day field unrestricted: `*/10` days OR Mondays.
    assert [t[8:10] for t in times("0 0 */10 1 MON", utc(2023, 12, 31), 6)] == [
        "01", "08", "11", "15", "21", "22"
    ]


def test_months_without_the_day_are_skipped():
    assert times("0 0 31 * *", NOW, 3) == [
        "2024-01-31T00:00:00+00:00",
        "2024-03-31T00:00:00+00:00",
        "2024-05-31T00:00:00+00:00",
    ]
    assert times("0 0 29 2 *", NOW, 2) == ["2024-02-29T00:00:00+00:00", "2028-02-29T00:00:00+00:00"]


# --- formats §6.4: every validation reason -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "expected 5 or 6 fields, got 0"),
        ("   ", "expected 5 or 6 fields, got 0"),
        ("* * * *", "expected 5 or 6 fields, got 4"),
        ("0 0 0 1 1 * 2024", "expected 5 or 6 fields, got 7"),
        ("@daily 5", "expected 5 or 6 fields, got 2"),
        ("60 * * * *", "value 60 out of range 0-59 in minute field"),
        ("60 * * * * *", "value 60 out of range 0-59 in second field"),
        ("0 24 * * *", "value 24 out of range 0-23 in hour field"),
        ("0 0 0 * *", "value 0 out of range 1-31 in day-of-month field"),
        ("0 0 32 * *", "value 32 out of range 1-31 in day-of-month field"),
        ("0 0 * 13 *", "value 13 out of range 1-12 in month field"),
        ("0 0 * 0 *", "value 0 out of range 1-12 in month field"),
        ("0 0 * * 8", "value 8 out of range 0-7 in day-of-week field"),
        ("0-60 * * * *", "value 60 out of range 0-59 in minute field"),
        ("5-1 * * * *", "invalid range 5-1 in minute field"),
        ("0 0 * * FRI-MON", "invalid range FRI-MON in day-of-week field"),
        ("5- * * * *", "invalid range 5- in minute field"),
        ("-5 * * * *", "invalid range -5 in minute field"),
        ("1-2-3 * * * *", "invalid range 1-2-3 in minute field"),
        ("*/0 * * * *", "invalid step in minute field"),
        ("0 */x * * *", "invalid step in hour field"),
        ("0 0 1-5/ * *", "invalid step in day-of-month field"),
        ("*/1/2 * * * *", "invalid step in minute field"),
        ("0 0 * * */-1", "invalid step in day-of-week field"),
        ("0 0 * FOO *", "unknown name 'FOO' in month field"),
        ("0 0 * MON *", "unknown name 'MON' in month field"),
        ("0 0 * * JAN", "unknown name 'JAN' in day-of-week field"),
        ("0 0 * * MONDAY", "unknown name 'MONDAY' in day-of-week field"),
        ("abc * * * *", "unknown name 'abc' in minute field"),
        ("@reboot", "unsupported alias '@reboot'"),
        ("@every 5m", "unsupported alias '@every'"),
        ("0 0 L * *", "unsupported syntax 'L'"),
        ("0 0 15W * *", "unsupported syntax '15W'"),
        ("0 0 LW * *", "unsupported syntax 'LW'"),
        ("0 0 L-3 * *", "unsupported syntax 'L-3'"),
        ("0 0 * * 5L", "unsupported syntax '5L'"),
        ("0 0 * * 5#3", "unsupported syntax '5#3'"),
        ("0 0 * * MON#1", "unsupported syntax 'MON#1'"),
        ("? * * * *", "unsupported syntax '?'"),
        ("0 0 ?/2 * *", "unsupported syntax '?/2'"),
        ("1,,2 * * * *", "unsupported syntax '1,,2'"),
        ("1.5 * * * *", "unsupported syntax '1.5'"),
        ("0 0 31 2 *", "never fires"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_validation_reasons(text, expected):
    assert reason(text) == expected


def test_a_leap_day_fires():
    check("0 0 29 2 *", "UTC", min_interval_sec=1, now=utc(2024, 3, 1))


def test_unknown_time_zones():
    for name in ("Mars/Olympus", "", "europe/berlin", "../etc/passwd", " UTC", "/etc/localtime", "localtime", "America"):
        with pytest.raises(UnknownZone) as info:
            check("* * * * *", name, min_interval_sec=1, now=NOW)
        assert str(info.value) == f"unknown time zone: {name}"
    with pytest.raises(CronError):  # the expression is checked first
        check("bad", "Mars/Olympus", min_interval_sec=1, now=NOW)


@pytest.mark.parametrize(
    ("text", "minimum", "too_often"),
    [
        ("* * * * * *", 1, False),
        ("* * * * * *", 2, True),
        ("*/5 * * * *", 300, False),
        ("*/5 * * * *", 301, True),
        ("0,1 * * * *", 60, False),
        ("0,1 * * * *", 61, True),  # irregular: one gap of a minute in every hour
        ("@daily", 86_400, False),
    ],
)
def test_minimum_interval(text, minimum, too_often):
    if too_often:
        with pytest.raises(TooFrequent) as info:
            check(text, "UTC", min_interval_sec=minimum, now=NOW)
        assert str(info.value) == f"cron expression '{text}' fires more often than every {minimum} s"
    else:
        check(text, "UTC", min_interval_sec=minimum, now=NOW)


def test_the_minimum_interval_counts_real_seconds_across_a_dst_change():
    # In Berlin the hour after 01:00 on 2024-10-27 lasts two hours, the one on 2024-03-31 none.
    check("0 * * * *", "Europe/Berlin", min_interval_sec=3600, now=utc(2024, 10, 26, 20))
    with pytest.raises(TooFrequent):
        check("0 * * * *", "Europe/Berlin", min_interval_sec=3601, now=utc(2024, 10, 26, 20))


# --- formats §6.3: time zones and daylight saving ----------------------------------------------


def test_scheduled_at_is_rfc3339_with_the_zone_offset():
    assert rfc3339(utc(2024, 11, 28, 1), BERLIN) == "2024-11-28T02:00:00+01:00"
    assert rfc3339(utc(2024, 6, 1, 12, 0, 0), zone("Asia/Kolkata")) == "2024-06-01T17:30:00+05:30"
    assert rfc3339(utc(2024, 6, 1, 12, 0, 0), UTC_ZONE) == "2024-06-01T12:00:00+00:00"


def test_expressions_run_in_the_job_zone():
    assert times("0 9 * * *", NOW, 1, NEW_YORK) == ["2024-01-01T09:00:00-05:00"]
    assert parse("0 9 * * *").next_after(NOW, NEW_YORK) == utc(2024, 1, 1, 14)


@pytest.mark.parametrize(
    ("tz", "text", "after", "expected"),
    [
        # Berlin jumps from 02:00 to 03:00 on 2024-03-31: 02:30 does not exist that day.
        ("Europe/Berlin", "30 2 * * *", utc(2024, 3, 29, 12),
         ["2024-03-30T02:30:00+01:00", "2024-04-01T02:30:00+02:00"]),
        ("Europe/Berlin", "0 * * * *", utc(2024, 3, 30, 23, 30),
         ["2024-03-31T01:00:00+01:00", "2024-03-31T03:00:00+02:00", "2024-03-31T04:00:00+02:00"]),
        ("Europe/Berlin", "*/15 * * * *", utc(2024, 3, 31, 0, 30),
         ["2024-03-31T01:45:00+01:00", "2024-03-31T03:00:00+02:00"]),
        ("Europe/Berlin", "*/20 2 * * *", utc(2024, 3, 29, 12),
         ["2024-03-30T02:00:00+01:00", "2024-03-30T02:20:00+01:00", "2024-03-30T02:40:00+01:00",
          "2024-04-01T02:00:00+02:00"]),
        # New York jumps from 02:00 to 03:00 on 2024-03-10.
        ("America/New_York", "30 2 * * *", utc(2024, 3, 8, 12),
         ["2024-03-09T02:30:00-05:00", "2024-03-11T02:30:00-04:00"]),
        ("America/New_York", "59 59 1 * * *", utc(2024, 3, 10, 5),
         ["2024-03-10T01:59:59-05:00", "2024-03-11T01:59:59-04:00"]),
    ],
)
def test_spring_forward_skips_times_that_do_not_exist(tz, text, after, expected):
    assert times(text, after, len(expected), zone(tz)) == expected


@pytest.mark.parametrize(
    ("tz", "text", "after", "expected"),
    [
        # Berlin goes back from 03:00 to 02:00 on 2024-10-27: 02:xx happens twice, fires once.
        ("Europe/Berlin", "30 2 * * *", utc(2024, 10, 26, 12),
         ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]),
        ("Europe/Berlin", "0 * * * *", utc(2024, 10, 26, 23, 30),
         ["2024-10-27T02:00:00+02:00", "2024-10-27T03:00:00+01:00", "2024-10-27T04:00:00+01:00"]),
        # New York goes back from 02:00 to 01:00 on 2024-11-03: 01:xx happens twice.
        ("America/New_York", "30 1 * * *", utc(2024, 11, 2, 12),
         ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]),
        ("America/New_York", "*/30 * * * *", utc(2024, 11, 3, 4, 45),
         ["2024-11-03T01:00:00-04:00", "2024-11-03T01:30:00-04:00", "2024-11-03T02:00:00-05:00"]),
    ],
)
def test_fall_back_fires_repeated_times_once_at_the_first_occurrence(tz, text, after, expected):
    assert times(text, after, len(expected), zone(tz)) == expected


def test_from_inside_the_second_pass_the_repeated_times_do_not_fire_again():
    second_pass = utc(2024, 11, 3, 6, 10)  # 01:10 EST, after 01:10 EDT
    assert rfc3339(second_pass, NEW_YORK) == "2024-11-03T01:10:00-05:00"
    assert times("*/20 * * * *", second_pass, 2, NEW_YORK) == [
        "2024-11-03T02:00:00-05:00",
        "2024-11-03T02:20:00-05:00",
    ]


@pytest.mark.parametrize(
    ("tz", "text", "at", "expected"),
    [
        ("UTC", "*/5 * * * *", utc(2024, 1, 1, 10, 7, 30), "2024-01-01T10:05:00+00:00"),
        ("UTC", "*/5 * * * *", utc(2024, 1, 1, 10, 5), "2024-01-01T10:05:00+00:00"),  # inclusive
        ("UTC", "0 0 1 1 *", utc(2024, 6, 1), "2024-01-01T00:00:00+00:00"),
        # the latest firing before a jump forward is before the gap
        ("Europe/Berlin", "30 2 * * *", utc(2024, 3, 31, 12), "2024-03-30T02:30:00+01:00"),
        ("Europe/Berlin", "*/20 * * * *", utc(2024, 3, 31, 1, 10), "2024-03-31T03:00:00+02:00"),
        ("Europe/Berlin", "*/20 * * * *", utc(2024, 3, 31, 0, 59), "2024-03-31T01:40:00+01:00"),
        # inside the second pass, the latest firing is a first occurrence later on the clock
        ("America/New_York", "45 1 * * *", utc(2024, 11, 3, 6, 50), "2024-11-03T01:45:00-04:00"),
        ("America/New_York", "55 1 * * *", utc(2024, 11, 3, 6, 50), "2024-11-03T01:55:00-04:00"),
        ("America/New_York", "*/20 * * * *", utc(2024, 11, 3, 6, 50), "2024-11-03T01:40:00-04:00"),
        ("America/New_York", "*/20 * * * *", utc(2024, 11, 3, 7, 10), "2024-11-03T02:00:00-05:00"),
    ],
)
def test_latest_at_or_before(tz, text, at, expected):
    assert rfc3339(parse(text).latest_at_or_before(at, zone(tz)), zone(tz)) == expected


def test_never_fires_has_no_next_and_no_latest():
    never = parse("0 0 31 2 *")
    assert never.next_after(NOW, UTC_ZONE) is None
    assert never.latest_at_or_before(NOW, UTC_ZONE) is None


# --- croniter agrees with the parsed meaning -----------------------------------------------------


def _reference_next(e, after: datetime) -> datetime | None:
    """Brute force over days, independent of croniter: the first matching wall time after
    ``after`` (naive), within 8 years."""
    day = after.date()
    for _ in range(366 * 8 + 2):
        weekday = (calendar.weekday(day.year, day.month, day.day) + 1) % 7
        dom, dow = day.day in e.days, weekday in e.weekdays
        if e.days_restricted and e.weekdays_restricted:
            ok = dom or dow
        else:
            ok = (dom or not e.days_restricted) and (dow or not e.weekdays_restricted)
        if day.month in e.months and ok:
            for h in sorted(e.hours):
                for m in sorted(e.minutes):
                    for s in sorted(e.seconds):
                        candidate = datetime(day.year, day.month, day.day, h, m, s)
                        if candidate > after:
                            return candidate
        day += timedelta(days=1)
    return None


def _random_field(rng: random.Random, low: int, high: int, names: list[str] | None = None) -> str:
    def value() -> str:
        v = rng.randint(low, high)
        return names[v - low] if names and rng.random() < 0.3 else str(v)

    items = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        kind = rng.choice(["*", "n", "range", "step", "rangestep", "from"])
        a, b = sorted(rng.randint(low, high) for _ in range(2))
        step = rng.randint(1, max(1, (high - low) // 2))
        items.append(
            {
                "*": "*",
                "n": value(),
                "range": f"{a}-{b}",
                "step": f"*/{step}",
                "rangestep": f"{a}-{b}/{step}",
                "from": f"{a}/{step}",
            }[kind]
        )
    return ",".join(items)


def test_croniter_iterates_exactly_the_parsed_meaning():
    rng = random.Random(20241128)
    months = [m.upper() for m in calendar.month_abbr[1:]]
    days = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"]
    checked = 0
    while checked < 150:
        fields = [
            _random_field(rng, 0, 59),
            _random_field(rng, 0, 59),
            _random_field(rng, 0, 23),
            rng.choice(["*", "?", _random_field(rng, 1, 31)]),
            rng.choice(["*", _random_field(rng, 1, 12, months)]),
            rng.choice(["*", "?", _random_field(rng, 0, 7, days)]),
        ]
        text = " ".join(fields[rng.choice([0, 1]):])
        try:
            e = parse(text)
        except CronError:  # a random '?' in the wrong place
            continue
        after = datetime(2024, 1, 1) + timedelta(seconds=rng.randint(0, 3 * 366 * 86400))
        expected, current = [], after
        for _ in range(3):
            current = _reference_next(e, current)
            if current is None:
                break
            expected.append(current.replace(tzinfo=UTC))
        assert e.firings(after.replace(tzinfo=UTC), UTC_ZONE, 3) == expected, text
        checked += 1


# --- croniter on the raw text, and where formats §6 differs from it --------------------------------


def _croniter_raw(text: str, count: int) -> list[datetime]:
    from croniter import croniter

    it = croniter(text, datetime(2024, 1, 1))
    return [it.get_next(datetime).replace(tzinfo=UTC) for _ in range(count)]


@pytest.mark.parametrize(
    "text",
    [
        "0 0 * * 7",  # 7 is Sunday
        "0 0 * * 5-7",
        "0 0 * * SUN-SAT",
        "0 0 * * fri-7",
        "0 0 * * */2",
        "0 0 ? * MON",
        "0 0 13 1 FRI",  # both day fields restricted: either matches
        "0 0 1-31 * MON",
        "0 0 */10 1 MON",  # a stepped star restricts its field
        "0 0 1,15 * 0",
        "50/3 * * * *",
        "*/100 * * * *",
    ],
)
def test_croniter_reads_these_rules_as_formats_6_does(text):
    assert parse(text).firings(utc(2024, 1, 1), UTC_ZONE, 6) == _croniter_raw(text, 6)


def test_where_croniter_reads_the_text_otherwise_the_parser_decides():
    # `a/s` runs to the field's maximum, 7 (Sunday) for the day of week; croniter stops at 6.
    assert parse("0 0 * * 1/3").weekdays == {1, 4, 0}
    assert {d.weekday() for d in _croniter_raw("0 0 * * 1/3", 6)} == {0, 3}  # Mondays, Thursdays
    # croniter wraps a descending range around; formats §6.2 says a <= b.
    assert len(_croniter_raw("0 0 * * 6-0", 2)) == 2
    assert reason("0 0 * * 6-0") == "invalid range 6-0 in day-of-week field"
    # croniter puts the seconds of a 6-field expression last; formats §6.1 puts them first.
    assert _croniter_raw("5 0 * * * *", 1) == [utc(2024, 1, 1, 0, 5)]  # minute 5, hour 0
    assert times("5 0 * * * *", utc(2024, 1, 1), 1) == ["2024-01-01T00:00:05+00:00"]
