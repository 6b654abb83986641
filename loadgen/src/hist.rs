//! Latency histograms: HdrHistogram in nanoseconds (3 significant digits, up to an hour), their
//! percentiles in microseconds, and a compact serialized form to carry them between processes.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::Serialize;

/// Longest latency recorded as is; longer ones are clamped to it.
const MAX_NS: u64 = 3_600_000_000_000;

/// An empty latency histogram.
pub fn new() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static bounds are valid")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, latency_ns: u64) {
    histogram.saturating_record(latency_ns.clamp(1, MAX_NS));
}

/// The summary every report shows, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// 99.99th percentile.
    pub p99_99: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// The summary of a histogram (all zeros when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Percentiles {
            count: histogram.len(),
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p99_9: us(histogram.value_at_quantile(0.999)),
            p99_99: us(histogram.value_at_quantile(0.9999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1e3,
        }
    }
}

/// Adds `from` into `into` (same bounds, so this cannot fail).
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    into.add(from).expect("histograms share their bounds");
}

/// A histogram in HdrHistogram's V2 encoding, as hex text for JSON.
pub fn to_hex(histogram: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .expect("writing to a Vec cannot fail");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The histogram [`to_hex`] wrote; `None` if the text is not one.
pub fn from_hex(hex: &str) -> Option<Histogram<u64>> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let decoded: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes?[..]).ok()?;
    // Back into the standard bounds, so it merges with local histograms.
    let mut histogram = new();
    histogram.add(&decoded).ok()?;
    Some(histogram)
}

/// Serde adapter for a histogram field, as [`to_hex`] text.
pub mod as_hex {
    use hdrhistogram::Histogram;

    /// Writes the hex text.
    pub fn serialize<S: serde::Serializer>(
        histogram: &Histogram<u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::to_hex(histogram))
    }

    /// Reads the hex text.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Histogram<u64>, D::Error> {
        let hex = <String as serde::Deserialize>::deserialize(deserializer)?;
        super::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("not a V2 histogram"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut h = new();
        for us in 1..=100 {
            record(&mut h, us * 1_000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
        assert_eq!(Percentiles::of(&new()), Percentiles::default());
    }

    #[test]
    fn hex_round_trip_and_merge() {
        let mut h = new();
        record(&mut h, 12_345);
        record(&mut h, u64::MAX);
        let back = from_hex(&to_hex(&h)).unwrap();
        assert_eq!(back.len(), 2);
        let mut total = new();
        merge(&mut total, &back);
        merge(&mut total, &h);
        assert_eq!(total.len(), 4);
        assert!(from_hex("zz").is_none());
        assert!(from_hex("00").is_none());
    }
}
