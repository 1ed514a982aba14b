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
/// loss), hyper-parameters and replay tolerances use it.
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
pub struct Fixed(pub i64);

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
    fn checked_amounts() {
        assert_eq!(Amount(u64::MAX).checked_add(Amount(1)), None);
        assert_eq!(Amount(1).checked_sub(Amount(2)), None);
        assert_eq!(Amount(5).checked_sub(Amount(2)), Some(Amount(3)));
    }
}
