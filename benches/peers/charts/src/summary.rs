//! Reads `clarion-loadgen --json` reports and summarises their main latency: for each
//! percentile the chart shows, the median over the given runs.

use std::path::Path;

/// The percentiles drawn, as (label, key of `latency_us` in the loadgen's JSON).
pub const PERCENTILES: [(&str, &str); 5] = [
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p99.9", "p99_9"),
    ("max", "max"),
];

/// One server's latency percentiles in microseconds, in the order of [`PERCENTILES`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values_us: Vec<f64>,
}

impl Series {
    /// Parses `NAME=FILE[,FILE...]` and reads each file.
    pub fn from_arg(arg: &str) -> Result<Series, String> {
        let (name, files) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected NAME=FILE[,FILE...]"))?;
        let reports = files
            .split(',')
            .map(|file| read_report(Path::new(file)))
            .collect::<Result<Vec<_>, _>>()?;
        Series::from_reports(name, &reports)
    }

    /// The medians of the percentiles of `reports` (loadgen JSON values).
    pub fn from_reports(name: &str, reports: &[serde_json::Value]) -> Result<Series, String> {
        if reports.is_empty() {
            return Err(format!("{name}: no reports"));
        }
        let values_us = PERCENTILES
            .iter()
            .map(|(_, key)| {
                let runs = reports
                    .iter()
                    .map(|report| {
                        report["latency_us"][key]
                            .as_f64()
                            .ok_or_else(|| format!("{name}: a report has no latency_us.{key}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(median(runs))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Series {
            name: name.to_owned(),
            values_us,
        })
    }
}

fn read_report(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The median (the mean of the middle two for an even count); `values` must not be empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(p50: f64, max: f64) -> serde_json::Value {
        json!({"latency_us": {"p50": p50, "p90": 2.0, "p99": 3.0, "p99_9": 4.0, "max": max}})
    }

    #[test]
    fn medians_over_runs() {
        let series = Series::from_reports(
            "s",
            &[report(10.0, 9.0), report(30.0, 7.0), report(20.0, 8.0)],
        )
        .unwrap();
        assert_eq!(series.values_us, vec![20.0, 2.0, 3.0, 4.0, 8.0]);
        let even = Series::from_reports("s", &[report(10.0, 1.0), report(20.0, 3.0)]).unwrap();
        assert_eq!((even.values_us[0], even.values_us[4]), (15.0, 2.0));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Series::from_reports("s", &[]).is_err());
        assert!(Series::from_reports("s", &[json!({"latency_us": {"p50": 1}})]).is_err());
        assert!(Series::from_arg("no-equals-sign").is_err());
        assert!(Series::from_arg("s=/nonexistent/report.json").is_err());
    }
}
