//! Terraform numbers as the plugin protocol sends them. cty encodes a number as a
//! msgpack integer, a float64 when that is exact, and otherwise as a decimal string
//! (`0.2` arrives as `"0.2"`). [`Number`] accepts all three and serialises back exactly
//! what it received, so configuration values echoed into state stay equal to the
//! configuration.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
enum Repr {
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    value: f64,
    repr: Repr,
}

impl Number {
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The value as an integer, if it is a whole number.
    pub fn as_integer(&self) -> Option<i64> {
        match self.repr {
            Repr::Int(i) => Some(i),
            Repr::UInt(u) => i64::try_from(u).ok(),
            _ if self.value.fract() == 0.0 && self.value.abs() < 9.0e15 => Some(self.value as i64),
            _ => None,
        }
    }
}

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.repr {
            Repr::Int(i) => serializer.serialize_i64(*i),
            Repr::UInt(u) => serializer.serialize_u64(*u),
            Repr::Float(f) => serializer.serialize_f64(*f),
            Repr::Text(s) => serializer.serialize_str(s),
        }
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(Number {
            value: v as f64,
            repr: Repr::Int(v),
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number {
            value: v as f64,
            repr: Repr::UInt(v),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number {
            value: v,
            repr: Repr::Float(v),
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        let value: f64 = v
            .parse()
            .map_err(|_| E::custom(format!("{v:?} is not a number")))?;
        Ok(Number {
            value,
            repr: Repr::Text(v.to_string()),
        })
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Number, D::Error> {
        deserializer.deserialize_any(NumberVisitor)
    }
}

impl From<f64> for Number {
    fn from(value: f64) -> Self {
        Number {
            value,
            repr: Repr::Float(value),
        }
    }
}

impl From<i64> for Number {
    fn from(value: i64) -> Self {
        Number {
            value: value as f64,
            repr: Repr::Int(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_round_trip_exactly() {
        let n: Number = serde_json::from_str("\"0.2\"").unwrap();
        assert_eq!(n.value(), 0.2);
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"0.2\"");
        let i: Number = serde_json::from_str("4").unwrap();
        assert_eq!(i.as_integer(), Some(4));
        assert_eq!(serde_json::to_string(&i).unwrap(), "4");
        let f: Number = serde_json::from_str("2.5").unwrap();
        assert_eq!(f.as_integer(), None);
        assert!(serde_json::from_str::<Number>("\"many\"").is_err());
    }
}
