//! Percentile plots of latency histograms as SVG: latency against
//! percentile on a "nines" axis (50, 90, 99, 99.9, 99.99), the usual way
//! to read an HDR histogram.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Highest percentile drawn: 1 - 10^-NINES_MAX.
const NINES_MAX: f64 = 4.0;

/// Draws each (label, microsecond histogram) as a line of latency (ms) by percentile.
pub(crate) fn percentiles(
    path: &Path,
    title: &str,
    curves: &[(String, Histogram<u64>)],
) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(label, h)| (label.clone(), points(h)))
        .collect();
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..NINES_MAX, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(5)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()?;
    for (i, (label, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// (nines, ms) points: x = -log10(1 - q).
fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let steps = 400;
    (0..=steps)
        .map(|i| {
            let x = NINES_MAX * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1000.0)
        })
        .collect()
}

/// "0", "90", "99", "99.9", ... for whole nines.
fn percentile_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{q:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the nines axis labels.
    #[test]
    fn labels_of_the_nines_axis() {
        assert_eq!(percentile_label(0.0), "0");
        assert_eq!(percentile_label(1.0), "90");
        assert_eq!(percentile_label(2.0), "99");
        assert_eq!(percentile_label(3.0), "99.9");
    }

    /// Checks an SVG file is written for a small histogram.
    #[test]
    fn writes_an_svg() {
        let mut h = crate::stats::histogram();
        for us in [100, 200, 300, 5000] {
            h.record(us).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        percentiles(&path, "test", &[("a".into(), h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
    }
}
