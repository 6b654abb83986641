//! `peers-charts`: an SVG bar chart (plotters) of latency percentiles per server, from
//! `clarion-loadgen --json` reports, for `scripts/compare.sh`.
//!
//! `peers-charts --title T --out FILE.svg NAME=REPORT[,REPORT...]...`: one group of bars per
//! percentile (p50, p90, p99, p99.9, max), one bar per server (the median over its reports), on
//! a logarithmic axis in µs or, when the medians are all 1 ms or more, in ms.

mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use plotters::prelude::*;
use summary::{PERCENTILES, Series};

/// Bar colours, one per server in the order given.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// The flags.
#[derive(Parser, Debug)]
#[command(name = "peers-charts")]
struct Cli {
    /// Chart title.
    #[arg(long)]
    title: String,
    /// SVG file to write.
    #[arg(long)]
    out: PathBuf,
    /// NAME=REPORT[,REPORT...]: a server's name and its loadgen JSON reports.
    #[arg(required = true, value_name = "NAME=REPORTS")]
    servers: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = cli
        .servers
        .iter()
        .map(|arg| Series::from_arg(arg))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|series| draw(&cli.title, &cli.out, &series));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("peers-charts: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Draws `series` as grouped bars into the SVG file `out`.
fn draw(title: &str, out: &std::path::Path, series: &[Series]) -> Result<(), String> {
    if series.len() > COLOURS.len() {
        return Err(format!("at most {} servers per chart", COLOURS.len()));
    }
    let values = series.iter().flat_map(|s| s.values_us.iter().copied());
    let smallest = values.clone().fold(f64::INFINITY, f64::min).max(1.0);
    let largest = values.fold(1.0, f64::max);
    let (unit, divisor) = if smallest >= 1000.0 {
        ("ms", 1000.0)
    } else {
        ("µs", 1.0)
    };
    let floor = smallest / divisor / 2.0;
    let ceiling = largest / divisor * 2.0;

    let root = SVGBackend::new(out, (900, 480)).into_drawing_area();
    let failed = |e: DrawingAreaErrorKind<_>| format!("{}: {e}", out.display());
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..PERCENTILES.len() as f64, (floor..ceiling).log_scale())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(PERCENTILES.len() * 2 + 1)
        .x_label_formatter(&|x| percentile_at(*x).to_owned())
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            }
        })
        .y_desc(format!("latency ({unit}, log scale)"))
        .draw()
        .map_err(failed)?;

    let width = 0.8 / series.len() as f64;
    for (index, (server, colour)) in series.iter().zip(COLOURS).enumerate() {
        let bars = server.values_us.iter().enumerate().map(|(group, value)| {
            let left = group as f64 + 0.1 + index as f64 * width;
            Rectangle::new(
                [(left, floor), (left + width * 0.9, value / divisor)],
                colour.filled(),
            )
        });
        chart
            .draw_series(bars)
            .map_err(failed)?
            .label(server.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)
}

/// The percentile label for an x-axis key point: the group's name at its centre, else nothing.
fn percentile_at(x: f64) -> &'static str {
    let centre = x - 0.5;
    if centre >= 0.0 && centre.fract().abs() < 1e-9 {
        PERCENTILES
            .get(centre as usize)
            .map_or("", |(label, _)| label)
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_every_server_and_percentile() {
        let out = std::env::temp_dir().join(format!("peers-charts-{}.svg", std::process::id()));
        let series = [
            Series {
                name: "alpha".into(),
                values_us: vec![100.0, 200.0, 400.0, 800.0, 1600.0],
            },
            Series {
                name: "beta".into(),
                values_us: vec![50.0, 60.0, 70.0, 80.0, 90.0],
            },
        ];
        draw("title here", &out, &series).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        for text in ["title here", "alpha", "beta", "p50", "p99.9", "max", "µs"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.matches("<rect").count() >= 10);
    }

    #[test]
    fn labels_only_at_group_centres() {
        assert_eq!(percentile_at(0.5), "p50");
        assert_eq!(percentile_at(4.5), "max");
        assert_eq!(percentile_at(1.0), "");
        assert_eq!(percentile_at(5.5), "");
    }
}
