//! The sweep plot (`--plot FILE.svg`) with plotters: requested rate on the x axis (log), the
//! achieved rate on the left y axis (log) and recall on the right one (percent), one colour per
//! tool, each tool's knee marked with a vertical line. SVG only: a PNG needs a font file for
//! its text, which a server may not have (left for later; an SVG converts anywhere).

use plotters::prelude::*;

/// One step of one tool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotPoint {
    /// Requested packets per second.
    pub requested: u64,
    /// Achieved packets per second (median of the repetitions).
    pub achieved: f64,
    /// Recall, 0 to 1.
    pub recall: f64,
}

/// One tool's curve.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotSeries {
    /// `synwatch (syn)`, `masscan`, ...
    pub name: String,
    /// Its steps.
    pub points: Vec<PlotPoint>,
    /// Its knee, if it has one.
    pub knee: Option<u64>,
}

/// A plot that could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot draw the plot: {0}")]
pub struct PlotError(pub String);

fn failed(error: impl std::fmt::Display) -> PlotError {
    PlotError(error.to_string())
}

/// `12.5k`, `2M`: rates as people write them.
pub fn human_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{}M", trim(rate / 1e6))
    } else if rate >= 1e3 {
        format!("{}k", trim(rate / 1e3))
    } else {
        trim(rate)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.1}");
    text.strip_suffix(".0").map_or(text.clone(), str::to_string)
}

/// Draws `series` as an SVG document.
pub fn render_svg(title: &str, series: &[PlotSeries]) -> Result<String, PlotError> {
    let points = series.iter().flat_map(|series| series.points.iter());
    let (mut low, mut high) = (f64::MAX, 1.0f64);
    for point in points {
        low = low.min(point.requested as f64).min(point.achieved.max(1.0));
        high = high.max(point.requested as f64).max(point.achieved);
    }
    if low == f64::MAX {
        return Err(PlotError("no steps to plot".into()));
    }
    let (low, high) = (low / 1.5, high * 1.5);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 620)).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .right_y_label_area_size(64)
            .build_cartesian_2d((low..high).log_scale(), (low..high).log_scale())
            .map_err(failed)?
            .set_secondary_coord((low..high).log_scale(), 0.0..105.0);
        chart
            .configure_mesh()
            .x_desc("requested rate (packets/s)")
            .y_desc("achieved rate (packets/s)")
            .x_label_formatter(&|value| human_rate(*value))
            .y_label_formatter(&|value| human_rate(*value))
            .draw()
            .map_err(failed)?;
        chart.configure_secondary_axes().y_desc("recall (%)").draw().map_err(failed)?;
        for (index, series) in series.iter().enumerate() {
            let colour = Palette99::pick(index).to_rgba();
            let achieved = series.points.iter().map(|point| (point.requested as f64, point.achieved.max(low)));
            chart
                .draw_series(LineSeries::new(achieved, colour.stroke_width(2)))
                .map_err(failed)?
                .label(format!("{} achieved rate", series.name))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
            let recall: Vec<(f64, f64)> =
                series.points.iter().map(|point| (point.requested as f64, point.recall * 100.0)).collect();
            chart
                .draw_secondary_series(DashedLineSeries::new(recall.clone(), 6, 4, colour.stroke_width(2)))
                .map_err(failed)?
                .label(format!("{} recall", series.name))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 6, y), (x + 10, y), (x + 16, y)], colour.stroke_width(1))
                });
            chart
                .draw_secondary_series(recall.into_iter().map(|point| Circle::new(point, 3, colour.filled())))
                .map_err(failed)?;
            if let Some(knee) = series.knee {
                let knee = knee as f64;
                chart
                    .draw_secondary_series(LineSeries::new([(knee, 0.0), (knee, 105.0)], colour.stroke_width(1)))
                    .map_err(failed)?
                    .label(format!("{} knee: {}/s", series.name, human_rate(knee)))
                    .legend(move |(x, y)| PathElement::new([(x + 8, y - 6), (x + 8, y + 6)], colour.stroke_width(1)));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(failed)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, knee: Option<u64>) -> PlotSeries {
        let points = [10_000u64, 50_000, 100_000, 500_000, 1_000_000]
            .iter()
            .map(|&requested| PlotPoint {
                requested,
                achieved: requested.min(400_000) as f64,
                recall: if requested <= 100_000 { 1.0 } else { 0.8 },
            })
            .collect();
        PlotSeries { name: name.into(), points, knee }
    }

    #[test]
    fn the_plot_is_a_valid_svg_with_both_axes_every_tool_and_the_knee() {
        let svg = render_svg("sweep on the lab", &[series("synwatch (syn)", Some(100_000)), series("masscan", None)])
            .unwrap();
        let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = document.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let texts: Vec<&str> = document.descendants().filter_map(|node| node.text()).collect();
        for expected in [
            "sweep on the lab",
            "requested rate (packets/s)",
            "achieved rate (packets/s)",
            "recall (%)",
            "synwatch (syn) achieved rate",
            "masscan recall",
            "synwatch (syn) knee: 100k/s",
        ] {
            assert!(texts.iter().any(|text| text.contains(expected)), "no {expected:?} in {texts:?}");
        }
        assert!(!texts.iter().any(|text| text.contains("masscan knee")));
        // Five points per tool drawn as recall markers.
        assert_eq!(document.descendants().filter(|node| node.tag_name().name() == "circle").count(), 10);
    }

    #[test]
    fn nothing_to_plot_is_an_error_and_rates_read_like_people_write_them() {
        assert_eq!(render_svg("empty", &[]), Err(PlotError("no steps to plot".into())));
        assert_eq!(human_rate(2_000_000.0), "2M");
        assert_eq!(human_rate(12_500.0), "12.5k");
        assert_eq!(human_rate(999.0), "999");
    }
}
