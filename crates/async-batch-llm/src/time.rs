//! Time helpers every part shares: durations as results store them, civil
//! UTC times (HTTP dates, RFC 3339) read and written without a date crate,
//! and seconds from untrusted input turned into a [`Duration`] that is never
//! out of range.
//!
//! Every function here takes input from outside (a provider's header, a
//! user's flag) and so never panics: arithmetic is checked, and a value out
//! of range is `None` or clamped, as each function says.

use std::time::{Duration, SystemTime};

/// Durations as milliseconds with microsecond precision (`12.345`), the
/// unit of every duration in results, records and summaries.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes a duration as fractional milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_micros() as f64 / 1000.0)
    }

    /// Reads fractional milliseconds, rounded to the microsecond.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        super::secs_f64(ms / 1000.0).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "duration must be a finite, non-negative number of ms, got {ms}"
            ))
        })
    }
}

/// Optional durations as fractional milliseconds (`None` is absent).
pub mod option_duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some(d)` as fractional milliseconds.
    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_ms::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads fractional milliseconds or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            None => Ok(None),
            Some(ms) => super::secs_f64(ms / 1000.0).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "duration must be a finite, non-negative number of ms, got {ms}"
                ))
            }),
        }
    }
}

/// The longest duration [`secs_f64`] returns: about 31,700 years, far past
/// any timeout or hint, and far below `Duration::MAX` (so adding it to an
/// instant of a running program cannot overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(1 << 40);

/// `secs` seconds as a duration rounded to the microsecond, or `None` when
/// `secs` is negative or not a number. Values beyond [`MAX_DURATION`]
/// (infinity included) are clamped to it.
pub fn secs_f64(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    let max = MAX_DURATION.as_secs_f64();
    if secs >= max {
        return Some(MAX_DURATION);
    }
    let micros = (secs * 1e6).round();
    Some(Duration::from_micros(micros as u64))
}

/// Wall-clock times as results store them: RFC 3339 UTC with milliseconds
/// (`2026-12-01T09:30:00.125Z`), absent when unknown.
pub mod option_rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some(t)` as RFC 3339 with milliseconds.
    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    /// Reads an RFC 3339 time or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_rfc3339(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: {text:?}"))),
        }
    }
}

/// The wall clock of one run, read through tokio's clock: the wall time
/// when the run began plus tokio's time since. Results stamped with it keep
/// the spacing the engine saw (also under a paused test clock), and a
/// wall-clock step during the run does not reorder them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    at: SystemTime,
    since: tokio::time::Instant,
}

impl WallClock {
    /// A clock anchored now.
    pub(crate) fn start() -> Self {
        Self {
            at: SystemTime::now(),
            since: tokio::time::Instant::now(),
        }
    }

    /// The wall time of `instant` (an instant before the anchor is the
    /// anchor).
    pub(crate) fn at(&self, instant: tokio::time::Instant) -> SystemTime {
        let d = micros(instant.saturating_duration_since(self.since));
        self.at.checked_add(d).unwrap_or(self.at)
    }
}

/// `start + d`, or `None` when that instant is not representable (a
/// deadline that far away is no deadline).
pub(crate) fn after(start: tokio::time::Instant, d: Duration) -> Option<tokio::time::Instant> {
    start.checked_add(d)
}

/// A duration truncated to whole microseconds, as results store them.
pub(crate) fn micros(d: Duration) -> Duration {
    Duration::from_micros(d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year.abs() > 1_000_000 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC civil time as a [`SystemTime`]; `None` if it is out of range or
/// before 1970.
fn utc(year: i64, month: i64, day: i64, second_of_day: i64, nanos: u32) -> Option<SystemTime> {
    if !(0..86_400 + 1).contains(&second_of_day) || nanos >= 1_000_000_000 {
        return None;
    }
    let secs = days_from_civil(year, month, day)?
        .checked_mul(86_400)?
        .checked_add(second_of_day)?;
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Time from `now` until `at`: zero if it has passed, at most
/// [`MAX_DURATION`].
pub fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .min(MAX_DURATION)
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's
/// IMF-fixdate).
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)
    .and_then(|p| i64::try_from(p).ok())?
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    if !(0..24).contains(h) || !(0..60).contains(mi) || !(0..61).contains(se) {
        return None;
    }
    utc(year, month, day, h * 3600 + mi * 60 + se, 0)
}

/// Parses an RFC 3339 time (`2024-02-29T23:59:59.123456Z`, or with an
/// offset such as `+02:00`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (body, offset_secs) = if let Some(b) = text.strip_suffix(['Z', 'z']) {
        (b, 0i64)
    } else {
        let at = text.len().checked_sub(6)?;
        let (b, off) = (text.get(..at)?, text.get(at..)?);
        let sign = match off.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return None,
        };
        let (h, m) = off.get(1..)?.split_once(':')?;
        let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
        if h > 23 || m > 59 {
            return None;
        }
        (b, sign * (h * 3600 + m * 60))
    };
    let (date, time) = body.split_once(['T', 't', ' '])?;
    let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (clock, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = clock.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    if !(0..24).contains(&hour) || !(0..60).contains(&minute) || !(0..61).contains(&second) {
        return None;
    }
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<u32>().ok()?;
    let local = utc(year, month, day, hour * 3600 + minute * 60 + second, nanos)?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    if offset_secs >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// `t` as RFC 3339 UTC with whole seconds (`2026-12-01T09:30:00Z`).
pub fn format_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `t` as RFC 3339 UTC with milliseconds (`2026-12-01T09:30:00.125Z`).
pub fn format_rfc3339_millis(t: SystemTime) -> String {
    let whole = format_rfc3339(t);
    let millis = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_millis());
    format!("{}.{millis:03}Z", whole.trim_end_matches('Z'))
}

/// A duration as a person reads it: `45s`, `2m05s`, `3h20m`, `2d04h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn seconds_from_untrusted_numbers() {
        assert_eq!(secs_f64(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(secs_f64(0.0), Some(Duration::ZERO));
        assert_eq!(secs_f64(-1.0), None);
        assert_eq!(secs_f64(f64::NAN), None);
        assert_eq!(secs_f64(f64::INFINITY), Some(MAX_DURATION));
        assert_eq!(secs_f64(1e300), Some(MAX_DURATION));
        assert_eq!(secs_f64(1e-300), Some(Duration::ZERO));
    }

    #[test]
    fn wall_times_keep_milliseconds_and_read_back() {
        let t = at(1_764_581_400) + Duration::from_millis(125);
        let text = format_rfc3339_millis(t);
        assert_eq!(text, "2025-12-01T09:30:00.125Z");
        assert_eq!(parse_rfc3339(&text), Some(t));
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_clock_follows_tokio_time_from_its_anchor() {
        let clock = WallClock::start();
        let before = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(90)).await;
        let later = clock.at(tokio::time::Instant::now());
        let first = clock.at(before);
        assert_eq!(
            later.duration_since(first).ok(),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn http_dates_and_rfc3339_round_trip_and_refuse_nonsense() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(at(784_111_777))
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 99999999999 08:49:37 GMT"),
            None
        );
        assert_eq!(parse_rfc3339("1994-11-06T08:49:37Z"), Some(at(784_111_777)));
        assert_eq!(
            parse_rfc3339("1994-11-06T10:49:37+02:00"),
            Some(at(784_111_777))
        );
        assert_eq!(
            parse_rfc3339("1994-11-06T08:49:37.5Z"),
            Some(at(784_111_777) + Duration::from_millis(500))
        );
        assert_eq!(parse_rfc3339("soon"), None);
        assert_eq!(parse_rfc3339("1994-13-06T08:49:37Z"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
        assert_eq!(format_rfc3339(at(784_111_777)), "1994-11-06T08:49:37Z");
        for days in [0u64, 59, 365 * 30 + 7, 20_000, 2_932_896] {
            let t = at(days * 86_400 + 4_321);
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(until(at(10), at(4)), Duration::from_secs(6));
        assert_eq!(until(at(4), at(10)), Duration::ZERO);
    }
}
