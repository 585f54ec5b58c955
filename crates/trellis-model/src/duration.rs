//! Durations as operators write them: `250ms`, `10s`, `1m`, `1h`, `1.5s`, `500us`, `1m30s`, `0`.
//!
//! [`format_duration`] writes the shortest exact form in one unit (`200ms`, `10s`, `1h`), so a
//! formatted duration always parses back to the same value.

use std::time::Duration;

/// Units, largest first: (suffix, nanoseconds).
const UNITS: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const EXAMPLES: &str = "write 10s, 250ms, 1m";

/// Parse a duration: one or more `<number><unit>` parts (`1m30s`), where the number may have a
/// fraction (`1.5s`) and the unit is `h`, `m`, `s`, `ms`, `us` (or `µs`) or `ns`. A bare `0` is
/// zero. The error is a message for the operator, e.g.
/// `"10 sec" is not a duration (write 10s, 250ms, 1m)`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err(format!("an empty value is not a duration ({EXAMPLES})"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("\"{s}\" is negative; a duration is 0 or more"));
    }
    let invalid = || format!("\"{s}\" is not a duration ({EXAMPLES})");
    let too_large = || format!("\"{s}\" is too large for a duration");

    let mut nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        // The number: digits, optionally a fraction.
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(invalid());
        }
        // The unit: letters (and `µ`) up to the next digit.
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit = if unit == "µs" { "us" } else { unit };
        let scale = match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, scale)) => *scale,
            None if unit.is_empty() => {
                return Err(format!("\"{s}\" has no unit ({EXAMPLES})"));
            }
            None if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
                return Err(format!(
                    "\"{s}\" has an unknown unit \"{unit}\" (use h, m, s, ms, us or ns)"
                ));
            }
            None => return Err(invalid()),
        };

        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(too_large)?;
        // The fraction, digit by digit; anything finer than a nanosecond is dropped.
        let mut place = scale;
        for digit in fraction.bytes() {
            place /= 10;
            part += u128::from(digit - b'0') * place;
        }
        nanos = nanos.checked_add(part).ok_or_else(too_large)?;
        rest = after;
    }

    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is below 10^9, so it fits.
    let subsec = (nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Format a duration in the largest unit that represents it exactly: `200ms`, `10s`, `90s`,
/// `1h`, `1500ms`; zero is `0s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, scale) = UNITS
        .iter()
        .find(|(_, scale)| nanos.is_multiple_of(*scale))
        .copied()
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / scale)
}

/// `#[serde(with = "crate::duration::serde_duration")]`: a [`Duration`] as its formatted string,
/// so that a serialized config (e.g. `/config_dump`) reads and parses back the same.
pub(crate) mod serde_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 10s, 250ms or 1m")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }

        // A bare `0` is the one duration without a unit.
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            match v {
                0 => Ok(Duration::ZERO),
                _ => Err(E::custom(format!(
                    "\"{v}\" has no unit (write {v}s or {v}ms)"
                ))),
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!(
                    "\"{v}\" is negative; a duration is 0 or more"
                ))),
            }
        }
    }
}

/// `#[serde(default, with = "crate::duration::serde_option_duration")]`: an optional
/// [`Duration`], `null` (or absent) for none.
pub(crate) mod serde_option_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serde_duration::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        /// `Option` around the plain form, so that `null` is `None`.
        #[derive(Deserialize)]
        struct Plain(#[serde(with = "super::serde_duration")] Duration);
        Ok(Option::<Plain>::deserialize(deserializer)?.map(|Plain(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("500us", Duration::from_micros(500)),
            ("500µs", Duration::from_micros(500)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("1m30s", Duration::from_secs(90)),
            ("1h0.5m", Duration::from_secs(3630)),
            (".5s", Duration::from_millis(500)),
            ("0.001ms", Duration::from_micros(1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_with_a_hint() {
        assert_eq!(
            parse_duration("10 sec").unwrap_err(),
            "\"10 sec\" is not a duration (write 10s, 250ms, 1m)"
        );
        assert_eq!(
            parse_duration("10").unwrap_err(),
            "\"10\" has no unit (write 10s, 250ms, 1m)"
        );
        assert_eq!(
            parse_duration("2d").unwrap_err(),
            "\"2d\" has an unknown unit \"d\" (use h, m, s, ms, us or ns)"
        );
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        for bad in ["s", "1.2.3s", "1s ", " 1s", "1e3s", "ms10", "."] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(
            parse_duration("99999999999999999999999999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_duration("9999999999999999999h")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn formats_the_shortest_exact_form() {
        let cases = [
            (Duration::from_millis(200), "200ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(500), "500us"),
            (Duration::from_nanos(1_000_000_001), "1000000001ns"),
            (Duration::ZERO, "0s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d), "{want} parses back");
        }
    }

    #[test]
    fn serde_round_trips_as_a_string() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct T {
            #[serde(with = "serde_duration")]
            d: Duration,
        }
        let t = T {
            d: Duration::from_millis(1500),
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"d":"1500ms"}"#);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        assert_eq!(
            serde_json::from_str::<T>(r#"{"d":0}"#).unwrap().d,
            Duration::ZERO
        );
        let err = serde_json::from_str::<T>(r#"{"d":"10 sec"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a duration"), "{err}");
        assert!(serde_json::from_str::<T>(r#"{"d":10}"#).is_err());
    }
}
