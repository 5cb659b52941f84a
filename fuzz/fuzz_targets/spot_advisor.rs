//! Fuzzes the Spot Instance Advisor parser (`computearbitrage_core::spot_advisor`):
//! any bytes give rates or an error, never a panic, and every rate is one of the five
//! published buckets.
#![no_main]

use computearbitrage_core::spot_advisor::parse;
use computearbitrage_core::InterruptionRate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rates) = parse(data) {
        for rate in rates.iter() {
            assert!(
                (0..=4).any(|b| InterruptionRate::from_aws_bucket(b) == rate),
                "{rate:?} is not a bucket"
            );
        }
    }
});
