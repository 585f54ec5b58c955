//! A share of requests, 0–100 %, as route filters take it (a fault's `percentage`, a mirror's
//! `percent` or `fraction`). Kept as a whole number of millionths of the requests, so that it
//! compares exactly and a proxy decides with one integer comparison.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Millionths of the requests that 100 % is.
const ALL: u32 = 1_000_000;

/// A share of requests, between 0 and 100 % in steps of 0.0001 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Percent(u32);

impl Percent {
    /// Every request.
    pub const ALL: Percent = Percent(ALL);
    /// No request.
    pub const NONE: Percent = Percent(0);

    /// `percent` (0 to 100, fractions allowed), or `None` out of range or not a number.
    pub fn new(percent: f64) -> Option<Percent> {
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return None;
        }
        // In range: at most 1e6, no truncation.
        Some(Percent((percent * 10_000.0).round() as u32))
    }

    /// `numerator / denominator` (Gateway API's `fraction`), or `None` unless
    /// `0 ≤ numerator ≤ denominator` and `denominator > 0`.
    pub fn fraction(numerator: u32, denominator: u32) -> Option<Percent> {
        if denominator == 0 || numerator > denominator {
            return None;
        }
        let millionths = u64::from(numerator) * u64::from(ALL) / u64::from(denominator);
        u32::try_from(millionths).ok().map(Percent)
    }

    /// The share in millionths of the requests (1 000 000 is every request).
    pub fn per_million(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Is a request whose draw (uniform over `u64`) is `draw` in the share?
    pub fn includes(self, draw: u64) -> bool {
        match self.0 {
            0 => false,
            ALL => true,
            share => draw % u64::from(ALL) < u64::from(share),
        }
    }
}

impl Default for Percent {
    fn default() -> Self {
        Percent::ALL
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(10_000) {
            write!(f, "{}", self.0 / 10_000)
        } else {
            let text = format!("{:.4}", self.as_f64());
            f.write_str(text.trim_end_matches('0'))
        }
    }
}

/// A whole percentage as an integer (`50`), else a float (`0.5`).
impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(10_000) {
            serializer.serialize_u32(self.0 / 10_000)
        } else {
            serializer.serialize_f64(self.as_f64())
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Percent::new(value).ok_or_else(|| {
            serde::de::Error::custom(format!("{value} is not a percentage (0 to 100)"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_and_fractions() {
        assert_eq!(Percent::new(100.0), Some(Percent::ALL));
        assert_eq!(Percent::new(0.5).map(Percent::per_million), Some(5_000));
        assert_eq!(Percent::new(100.5), None);
        assert_eq!(Percent::new(-1.0), None);
        assert_eq!(Percent::new(f64::NAN), None);
        assert_eq!(
            Percent::fraction(1, 3).map(Percent::per_million),
            Some(333_333)
        );
        assert_eq!(Percent::fraction(4, 3), None);
        assert_eq!(Percent::fraction(0, 0), None);
        assert_eq!(Percent::new(12.5).unwrap().to_string(), "12.5");
        assert_eq!(Percent::new(10.0).unwrap().to_string(), "10");
    }

    #[test]
    fn a_share_includes_that_share_of_draws() {
        let ten = Percent::new(10.0).unwrap();
        let hits = (0..1_000_000u64).filter(|d| ten.includes(*d)).count();
        assert_eq!(hits, 100_000);
        assert!(Percent::ALL.includes(u64::MAX));
        assert!(!Percent::NONE.includes(0));
    }

    #[test]
    fn serializes_whole_numbers_as_integers() {
        let json = serde_json::to_value([Percent::new(25.0), Percent::new(0.25)]).unwrap();
        assert_eq!(json, serde_json::json!([25, 0.25]));
        let back: Vec<Percent> = serde_json::from_value(json).unwrap();
        assert_eq!(
            back,
            [Percent::new(25.0).unwrap(), Percent::new(0.25).unwrap()]
        );
    }
}
