//! compare-report's chart: the latency percentiles of each item and stream count, one panel
//! each (log scale, one line per system), into a PNG. Built with the `peers` feature only
//! (plotters); the tables and goals need nothing of it.

use std::path::Path;

use plotters::prelude::*;

use crate::{Row, groups};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

pub fn draw(rows: &[Row], png: &Path, font: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let bytes: &'static [u8] = Box::leak(
        std::fs::read(font)
            .map_err(|e| format!("font {}: {e}", font.display()))?
            .into_boxed_slice(),
    );
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "not a TrueType font")?;
    let mut systems: Vec<&str> = Vec::new();
    for row in rows {
        if !systems.contains(&row.system.as_str()) {
            systems.push(&row.system);
        }
    }
    let groups = groups(rows);
    let columns = 2;
    let panel_rows = groups.len().div_ceil(columns);
    let root = BitMapBackend::new(png, (1400, 60 + 360 * panel_rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        "Latency percentiles, AgentKeeper vs peers (same machine, same load generator; log scale)",
        (20, 18),
        ("sans-serif", 24).into_font(),
    ))?;
    let panels = body.split_evenly((panel_rows, columns));
    let names = ["p50", "p90", "p99", "p99.9"];
    for (((item, streams), members), panel) in groups.iter().zip(panels.iter()) {
        // Whole decades (two at least), so the log axis is labelled at 10^n only.
        let low = members.iter().flat_map(|r| r.percentiles).min().unwrap_or(1).max(1) as f64;
        let high = members.iter().flat_map(|r| r.percentiles).max().unwrap_or(10).max(2) as f64;
        let low = 10f64.powf((low * 0.95).log10().floor());
        let mut high = 10f64.powf((high * 1.05).log10().ceil());
        if high / low < 100.0 {
            high *= 10.0; // one decade alone gets a label at every minor line
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{item}, {streams} stream{}", if *streams == 1 { "" } else { "s" }),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2f64..3.2f64, (low..high).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(4)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && (0.0..=3.0).contains(&i) {
                    names[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("latency")
            .y_label_formatter(&|y| {
                if *y >= 1_000_000.0 {
                    format!("{:.0} s", y / 1_000_000.0)
                } else if *y >= 1000.0 {
                    format!("{:.0} ms", y / 1000.0)
                } else {
                    format!("{y:.0} µs")
                }
            })
            .label_style(("sans-serif", 14))
            .draw()?;
        for row in members {
            let index = systems.iter().position(|s| *s == row.system).unwrap_or(0);
            let color = COLORS[index % COLORS.len()];
            let points: Vec<(f64, f64)> = row
                .percentiles
                .iter()
                .enumerate()
                .map(|(i, p)| (i as f64, (*p).max(1) as f64))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(row.system.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
