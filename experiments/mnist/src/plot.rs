//! The two figures, drawn with plotters into PNG (font from a crate: no system fonts needed).

use crate::protocol::gauss_id;
use crate::report::RowSummary;
use anyhow::{anyhow, Result};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (960, 600);

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let font = epaint_default_fonts::UBUNTU_LIGHT;
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // Only fails on unparsable font data, which a crate constant is not.
            let _ = plotters::style::register_font("sans-serif", style, font);
        }
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Draws the legend (lower right, where the plots leave room) and writes the file.
fn finish<'a, CT: CoordTranslate>(
    root: &DrawingArea<BitMapBackend<'a>, Shift>,
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    font: u32,
) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", font))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Linear-probe (and kNN) top-1 against σ on a log axis, with ±1 std bars, and the reference
/// rows as horizontal lines.
pub fn sigma_sweep(path: &Path, summary: &[RowSummary], sigmas: &[f64]) -> Result<()> {
    register_font();
    let pts: Vec<(f64, &RowSummary)> = sigmas
        .iter()
        .filter_map(|&s| {
            summary
                .iter()
                .find(|r| r.id == gauss_id(s, ""))
                .map(|r| (s, r))
        })
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let refs: Vec<(&str, RGBColor)> = vec![
        ("real-simclr", RED),
        ("real-supcon", MAGENTA),
        ("none-simclr", RGBColor(230, 140, 0)),
        ("raw-pixels", BLACK),
        ("random-init", RGBColor(128, 128, 128)),
    ];
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for (_, r) in &pts {
        for s in [r.linear_top1, r.knn_top1] {
            lo = lo.min(s.mean - s.std);
            hi = hi.max(s.mean + s.std);
        }
    }
    for (id, _) in &refs {
        if let Some(r) = summary.iter().find(|r| r.id == *id) {
            lo = lo.min(r.linear_top1.mean);
            hi = hi.max(r.linear_top1.mean);
        }
    }
    // Room below the data for the legend.
    let (lo, hi) = (
        (lo - 0.45 * (hi - lo) - 0.01).max(0.0) * 100.0,
        (hi + 0.01).min(1.0) * 100.0,
    );
    // x = log2(σ / σ0): the sweep's doublings fall on integer ticks, labelled with σ itself.
    let s0 = pts[0].0;
    let x = move |s: f64| (s / s0).log2();
    let (smin, smax) = (x(pts[0].0) - 0.5, x(pts[pts.len() - 1].0) + 0.5);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "GenRep on MNIST: top-1 on the 1000 real test digits vs σ",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(smin..smax, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("σ of the Gaussian positives (log scale)")
        .y_desc("top-1 (%)")
        .x_labels(((smax - smin) as usize + 1).max(2))
        .x_label_formatter(&|v| {
            format!("{:.3}", s0 * v.exp2())
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        })
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (name, pick, color) in [
        ("synthetic Gaussian, SimCLR: linear probe", 0, BLUE),
        ("synthetic Gaussian, SimCLR: kNN", 1, RGBColor(0, 150, 200)),
    ] {
        let stat = |r: &RowSummary| if pick == 0 { r.linear_top1 } else { r.knn_top1 };
        let line: Vec<(f64, f64)> = pts
            .iter()
            .map(|(s, r)| (x(*s), 100.0 * stat(r).mean))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(3)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(pts.iter().map(|(s, r)| {
                let st = stat(r);
                ErrorBar::new_vertical(
                    x(*s),
                    100.0 * (st.mean - st.std),
                    100.0 * st.mean,
                    100.0 * (st.mean + st.std),
                    color.stroke_width(2),
                    10,
                )
            }))
            .map_err(err)?;
    }
    for (id, color) in refs {
        let Some(r) = summary.iter().find(|r| r.id == id) else {
            continue;
        };
        let y = 100.0 * r.linear_top1.mean;
        let style = color.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(smin, y), (smax, y)],
                8,
                6,
                style,
            ))
            .map_err(err)?
            .label(format!("{}: linear probe", r.id))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    finish(&root, &mut chart, 15)
}

/// kNN top-1 during training (mean over seeds) for the main rows.
pub fn steps(path: &Path, summary: &[RowSummary]) -> Result<()> {
    register_font();
    let rows: Vec<&RowSummary> = summary.iter().filter(|r| r.curve.len() > 1).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let max_step = rows
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.0))
        .max()
        .unwrap_or(1);
    let (mut lo, mut hi) = (100.0f64, 0.0f64);
    for r in &rows {
        for &(_, a) in &r.curve {
            lo = lo.min(100.0 * a);
            hi = hi.max(100.0 * a);
        }
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "kNN top-1 on the real test digits during training (mean over seeds)",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            0usize..max_step,
            (lo - 0.4 * (hi - lo) - 1.0).max(0.0)..(hi + 1.0).min(100.0),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("kNN top-1 (%)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (i, r) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = if r.id.starts_with("real") {
            color.stroke_width(3)
        } else {
            color.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(
                r.curve.iter().map(|&(s, a)| (s, 100.0 * a)),
                style,
            ))
            .map_err(err)?
            .label(r.id.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    finish(&root, &mut chart, 14)
}
