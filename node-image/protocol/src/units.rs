//! Integer units. Consensus state never holds a float: amounts are integers of the smallest
//! unit, fractions are parts per million, metrics and hyper-parameters are fixed-point numbers.

use std::fmt;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

/// A block height. Height 0 is genesis; the first block is height 1.
pub type Height = u64;

/// A token amount in the smallest unit.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
pub struct Amount(pub u64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// `self × num / den`, rounded down, without overflow. `den` must not be zero.
    pub fn mul_div(self, num: u64, den: u64) -> Amount {
        let v = u128::from(self.0) * u128::from(num) / u128::from(den);
        Amount(u64::try_from(v).expect("num <= den keeps the result within u64"))
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A fraction in parts per million (0 ..= 1,000,000).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Debug,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
pub struct Ppm(pub u32);

impl Ppm {
    pub const ONE: Ppm = Ppm(1_000_000);

    pub fn is_valid(self) -> bool {
        self <= Ppm::ONE
    }

    /// This fraction of `amount`, rounded down (the remainder stays with whoever held it).
    pub fn of(self, amount: Amount) -> Amount {
        debug_assert!(self.is_valid());
        amount.mul_div(u64::from(self.0.min(Ppm::ONE.0)), u64::from(Ppm::ONE.0))
    }
}

/// A fixed-point number with six decimal places: `Fixed(975_000)` is 0.975. Metrics (accuracy,
/// loss), hyper-parameters and replay tolerances use it. In JSON and YAML it is written as a
/// person writes it, `0.975`; a number with more than six decimal places is refused rather than
/// rounded, so a file never means something other than it says.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, BorshSerialize, BorshDeserialize,
)]
pub struct Fixed(pub i64);

/// The largest magnitude whose decimal form survives a round trip through an `f64` exactly.
const FIXED_DECIMAL_LIMIT: i64 = 1 << 50;

impl Fixed {
    /// Values below this in magnitude are written as plain decimal numbers; the ledger keeps
    /// what it stores below it, so every view of the chain reads back exactly.
    pub const DECIMAL_LIMIT: i64 = FIXED_DECIMAL_LIMIT;

    /// The fixed-point value a decimal number denotes, if it has at most six decimal places
    /// and fits.
    pub fn from_decimal(x: f64) -> Result<Fixed, String> {
        let scaled = x * Self::SCALE as f64;
        if !scaled.is_finite() || scaled.abs() >= FIXED_DECIMAL_LIMIT as f64 {
            return Err(format!("{x} is out of range"));
        }
        let v = scaled.round();
        // What is left after rounding is either f64's own representation error (relative,
        // ~1e-16) or digits past the sixth decimal place.
        if (v - scaled).abs() > scaled.abs() * 4.0 * f64::EPSILON + 1e-9 {
            return Err(format!("{x} has more than six decimal places"));
        }
        Ok(Fixed(v as i64))
    }
}

impl Serialize for Fixed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.unsigned_abs() < FIXED_DECIMAL_LIMIT as u64 {
            s.serialize_f64(self.to_f64())
        } else {
            // Only reachable for values no file or measurement produces; stay exact.
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Fixed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fixed, D::Error> {
        struct Decimal;
        impl serde::de::Visitor<'_> for Decimal {
            type Value = Fixed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal number with at most six decimal places")
            }
            fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Fixed, E> {
                Fixed::from_decimal(x).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, x: i64) -> Result<Fixed, E> {
                x.checked_mul(Fixed::SCALE)
                    .filter(|v| v.abs() < FIXED_DECIMAL_LIMIT)
                    .map(Fixed)
                    .ok_or_else(|| E::custom(format!("{x} is out of range")))
            }
            fn visit_u64<E: serde::de::Error>(self, x: u64) -> Result<Fixed, E> {
                let x = i64::try_from(x).map_err(|_| E::custom(format!("{x} is out of range")))?;
                self.visit_i64(x)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Fixed, E> {
                s.trim()
                    .parse::<Fixed>()
                    .map_err(|e| E::custom(format!("{s:?}: {e}")))
            }
        }
        d.deserialize_any(Decimal)
    }
}

impl std::str::FromStr for Fixed {
    type Err = String;

    /// An exact decimal: `-12.5`, `0.000001`, `3`.
    fn from_str(s: &str) -> Result<Fixed, String> {
        let (neg, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) {
            return Err("not a decimal number".into());
        }
        if frac.len() > 6 {
            return Err("more than six decimal places".into());
        }
        let whole: i128 = whole.parse().map_err(|_| "out of range".to_string())?;
        let frac: i128 = format!("{frac:0<6}").parse().expect("six digits");
        let v = whole * i128::from(Fixed::SCALE) + frac;
        i64::try_from(if neg { -v } else { v })
            .map(Fixed)
            .map_err(|_| "out of range".into())
    }
}

impl Fixed {
    pub const SCALE: i64 = 1_000_000;

    /// The nearest fixed-point value to `x` (for converting measured metrics off chain).
    pub fn from_f64(x: f64) -> Fixed {
        Fixed((x * Self::SCALE as f64).round() as i64)
    }

    pub fn to_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }
}

impl fmt::Debug for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = Self::SCALE as u64;
        write!(f, "{sign}{}.{:06}", abs / scale, abs % scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_rounds_down_and_never_overflows() {
        assert_eq!(Ppm(100_000).of(Amount(1_000_005)), Amount(100_000));
        assert_eq!(Ppm::ONE.of(Amount(u64::MAX)), Amount(u64::MAX));
        assert_eq!(Ppm(0).of(Amount(u64::MAX)), Amount(0));
        assert_eq!(Ppm(500_000).of(Amount(u64::MAX)), Amount(u64::MAX / 2));
    }

    #[test]
    fn fixed_display() {
        assert_eq!(Fixed(975_000).to_string(), "0.975000");
        assert_eq!(Fixed(-1_500_000).to_string(), "-1.500000");
        assert_eq!(Fixed::from_f64(0.1234567), Fixed(123_457));
    }

    #[test]
    fn fixed_is_written_as_a_decimal_and_read_back_exactly() {
        for v in [
            0,
            1,
            975_000,
            50_000,
            -1_500_000,
            123_456_789,
            (1 << 50) - 1,
        ] {
            let json = serde_json::to_string(&Fixed(v)).unwrap();
            assert_eq!(
                serde_json::from_str::<Fixed>(&json).unwrap(),
                Fixed(v),
                "{json}"
            );
        }
        assert_eq!(serde_json::to_string(&Fixed(975_000)).unwrap(), "0.975");
        assert_eq!(
            serde_json::from_str::<Fixed>("3").unwrap(),
            Fixed(3_000_000)
        );
        assert_eq!(
            serde_json::from_str::<Fixed>("\"0.000001\"").unwrap(),
            Fixed(1)
        );
        for bad in ["0.0000001", "1e30", "\"1.2.3\"", "\"0.1234567\""] {
            assert!(serde_json::from_str::<Fixed>(bad).is_err(), "{bad}");
        }
        for extreme in [i64::MAX, i64::MIN, -(1 << 50)] {
            let json = serde_json::to_string(&Fixed(extreme)).unwrap();
            assert_eq!(
                serde_json::from_str::<Fixed>(&json).unwrap(),
                Fixed(extreme),
                "{json}"
            );
        }
        // Past the sixth decimal place is refused at any magnitude, not rounded.
        assert!(Fixed::from_decimal(50_000_000.000_000_4).is_err());
    }

    #[test]
    fn checked_amounts() {
        assert_eq!(Amount(u64::MAX).checked_add(Amount(1)), None);
        assert_eq!(Amount(1).checked_sub(Amount(2)), None);
        assert_eq!(Amount(5).checked_sub(Amount(2)), Some(Amount(3)));
    }
}
