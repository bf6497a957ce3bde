//! The SVG report of `meridian-benches geo` (plotters): the latency distribution
//! (CDF) of each operation class per design, and each link's visibility lag beside
//! the route's one-way delay and the speed-of-light floor.

use std::path::Path;

use plotters::prelude::*;

use crate::geo::DesignFigures;

/// One colour per design, in the order they ran.
const COLOURS: [RGBColor; 4] = [
    RGBColor(214, 96, 77),
    RGBColor(146, 112, 196),
    RGBColor(33, 102, 172),
    RGBColor(90, 160, 90),
];

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the report: {e}")
}

/// Draws the report into `path`.
pub(crate) fn draw(path: &Path, regions: &[&str], designs: &[DesignFigures]) -> Result<(), String> {
    let classes: Vec<&str> = designs
        .first()
        .map(|d| d.classes.iter().map(|c| c.class).collect())
        .unwrap_or_default();
    let rows = classes.len().div_ceil(2) + 1;
    let root = SVGBackend::new(path, (1200, 340 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .titled(
            &format!("meridian geo benchmark: {}", regions.join(", ")),
            ("sans-serif", 22),
        )
        .map_err(err)?;
    let (top, bottom) = root.split_vertically(340 * (rows as u32 - 1));
    let panels = top.split_evenly((rows - 1, 2));
    for (panel, class) in panels.iter().zip(&classes) {
        cdf_panel(panel, class, designs)?;
    }
    lag_panel(&bottom, designs)?;
    root.present().map_err(err)
}

/// The CDF of one class's latency, a line per design (log scale).
fn cdf_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    class: &str,
    designs: &[DesignFigures],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let points: Vec<(usize, Vec<(f64, f64)>)> = designs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let c = d.classes.iter().find(|c| c.class == class)?;
            (!c.cdf.is_empty()).then(|| (i, c.cdf.iter().map(|&(x, y)| (x.max(0.05), y)).collect()))
        })
        .collect();
    let xs = || points.iter().flat_map(|(_, p)| p.iter().map(|&(x, _)| x));
    let max = xs().fold(1.0f64, f64::max);
    let min = xs().fold(max, f64::min);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{class}: latency CDF"), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d((min / 1.5..max * 1.5).log_scale(), 0.0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|v| round_label(*v))
        .x_desc("ms (log)")
        .y_desc("fraction")
        .draw()
        .map_err(err)?;
    for (i, pts) in points {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(err)?
            .label(designs[i].name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// Each link's visibility lag p99 per design, with the route's one-way delay and
/// the speed-of-light floor of the pair.
fn lag_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    designs: &[DesignFigures],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let Some(first) = designs.first() else {
        return Ok(());
    };
    let links: Vec<String> = first
        .lags
        .iter()
        .map(|l| format!("{}>{}", short(&l.from), short(&l.to)))
        .collect();
    let max = designs
        .iter()
        .flat_map(|d| d.lags.iter().map(|l| l.p99_ms.max(l.route_one_way_ms)))
        .fold(1.0f64, f64::max);
    let n = links.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "visibility lag p99 per link (dots), the route's one-way delay (black), the speed-of-light floor (grey)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(44)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0.0f64..max * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            match i >= 0.0 && (x - i).abs() < 1e-6 {
                true => links.get(i as usize).cloned().unwrap_or_default(),
                false => String::new(),
            }
        })
        .y_desc("ms")
        .disable_x_mesh()
        .draw()
        .map_err(err)?;
    let route: Vec<(f64, f64)> = (first.lags.iter().enumerate())
        .map(|(i, l)| (i as f64, l.route_one_way_ms))
        .collect();
    chart
        .draw_series(route.iter().map(|&(x, y)| {
            PathElement::new(vec![(x - 0.4, y), (x + 0.4, y)], BLACK.stroke_width(2))
        }))
        .map_err(err)?
        .label("route one-way delay")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    let floor: Vec<(f64, f64)> = (first.lags.iter().enumerate())
        .map(|(i, l)| (i as f64, l.floor_one_way_ms))
        .collect();
    chart
        .draw_series(floor.iter().map(|&(x, y)| {
            PathElement::new(
                vec![(x - 0.3, y), (x + 0.3, y)],
                RGBColor(120, 120, 120).stroke_width(2),
            )
        }))
        .map_err(err)?
        .label("speed-of-light floor")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(120, 120, 120)));
    let width = 0.6 / designs.len().max(1) as f64;
    for (k, d) in designs.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let offset = -0.3 + width * (k as f64 + 0.5);
        chart
            .draw_series(
                d.lags.iter().enumerate().map(move |(i, l)| {
                    Circle::new((i as f64 + offset, l.p99_ms), 4, colour.filled())
                }),
            )
            .map_err(err)?
            .label(d.name)
            .legend(move |(x, y)| Circle::new((x + 9, y), 4, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// A region's short name for axis labels: us-east → use.
fn short(id: &str) -> String {
    id.split('-')
        .enumerate()
        .map(|(i, part)| match i {
            0 => part.to_owned(),
            _ => part.chars().take(1).collect(),
        })
        .collect()
}

/// An axis label: at most three significant digits, no trailing zeros.
fn round_label(v: f64) -> String {
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else if v >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{v:.digits$}");
    match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => text,
    }
}
