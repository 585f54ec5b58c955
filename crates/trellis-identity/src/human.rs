//! Times and durations the way an operator reads them: `2025-06-01 10:00:00 UTC`, `3h 12m`.

use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

/// A point in time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(at: SystemTime) -> String {
    let t = OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration in its two largest units: `9y 364d`, `23h 59m`, `3h`, `45s`.
pub fn duration(d: Duration) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;
    let secs = d.as_secs();
    let (big, big_unit, small, small_unit) = if secs >= YEAR {
        (secs / YEAR, "y", secs % YEAR / DAY, "d")
    } else if secs >= DAY {
        (secs / DAY, "d", secs % DAY / HOUR, "h")
    } else if secs >= HOUR {
        (secs / HOUR, "h", secs % HOUR / MINUTE, "m")
    } else if secs >= MINUTE {
        (secs / MINUTE, "m", secs % MINUTE, "s")
    } else {
        (secs, "s", 0, "")
    };
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// How far `at` lies from `now`: `Ok(left)` when it is still ahead, `Err(ago)` when past.
pub fn until(now: SystemTime, at: SystemTime) -> Result<Duration, Duration> {
    match at.duration_since(now) {
        Ok(left) => Ok(left),
        Err(past) => Err(past.duration()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_their_two_largest_units() {
        let s = Duration::from_secs;
        assert_eq!(duration(s(0)), "0s");
        assert_eq!(duration(s(45)), "45s");
        assert_eq!(duration(s(90)), "1m 30s");
        assert_eq!(duration(s(3 * 3600)), "3h");
        assert_eq!(duration(s(3 * 3600 + 12 * 60 + 5)), "3h 12m");
        assert_eq!(duration(s(86_399)), "23h 59m");
        assert_eq!(duration(s(2 * 86_400 + 3600)), "2d 1h");
        assert_eq!(duration(s(3650 * 86_400)), "10y");
    }

    #[test]
    fn times_print_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_772_000);
        assert_eq!(time(at), "2025-06-01 10:00:00 UTC");
    }
}
