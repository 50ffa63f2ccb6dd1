//! The report's figures, drawn in Rust (plotters) into a pixel buffer and
//! encoded as PNG. Text uses DejaVu Sans, embedded in the binary
//! (`assets/`), so nothing depends on the machine's fonts.
//!
//! * `roc.png`: the ROC curve of each finding and of the binary head, one
//!   grid, each panel's AUC in its legend.
//! * `pr.png`: precision–recall curves, average precision in the legends.
//! * `reliability.png`: the binary head's reliability diagram (15 bins).
//! * `confusion_binary.png`: the binary head's confusion matrix at its
//!   validation threshold (0.5 when it has none).
//! * `history.png`: training loss and validation macro AUC per epoch, from
//!   the run's `history.json`.
//! * `auc_intervals.png`: per-finding AUC with its 95 % interval beside the
//!   per-class AUCs CheXNet published (a paper's figures on its own test
//!   split, labelled so).

use std::sync::Once;

use chexvision_dataset::LABELS;
use chexvision_metrics::{precision_recall_curve, roc_curve, Calibration};
use plotters::prelude::*;

use crate::report::Report;
use crate::score::SplitScores;
use crate::EvalError;

const FONT: &str = "sans-serif";

/// CheXNet's per-class test AUCs (Rajpurkar et al. 2017, table 2), in the
/// fixed label order. A different test split and model: for orientation,
/// not comparison.
pub const CHEXNET_AUC: [f64; 14] = [
    0.8094, 0.9248, 0.8638, 0.7345, 0.8676, 0.7802, 0.7680, 0.8887, 0.7901, 0.8878, 0.9371, 0.8047,
    0.8062, 0.9164,
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            tracing::error!("the embedded plot font does not load: plots will lack text");
        }
    });
}

fn plot_error(e: impl std::fmt::Display) -> EvalError {
    EvalError::Plot(e.to_string())
}

/// Draws with `draw` on a white `width × height` canvas and returns the PNG.
fn canvas(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), EvalError>,
) -> Result<Vec<u8>, EvalError> {
    register_font();
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(plot_error)?;
        writer.write_image_data(&pixels).map_err(plot_error)?;
    }
    Ok(png_bytes)
}

type Curve = (String, Vec<(f64, f64)>, String);

/// A grid of curves on the unit square, `diagonal` drawn for ROC.
fn curve_grid(
    curves: &[Curve],
    x_label: &str,
    y_label: &str,
    diagonal: bool,
) -> Result<Vec<u8>, EvalError> {
    let (cols, rows) = (4usize, curves.len().div_ceil(4));
    canvas(1200, 300 * rows as u32, |root| {
        let panels = root.split_evenly((rows, cols));
        for (panel, (title, points, legend)) in panels.iter().zip(curves) {
            let mut chart = ChartBuilder::on(panel)
                .caption(title, (FONT, 16))
                .margin(6)
                .x_label_area_size(28)
                .y_label_area_size(36)
                .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .x_labels(5)
                .y_labels(5)
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style((FONT, 10))
                .axis_desc_style((FONT, 11))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(plot_error)?;
            if diagonal {
                chart
                    .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.25)))
                    .map_err(plot_error)?;
            }
            if points.is_empty() {
                chart
                    .draw_series(std::iter::once(Text::new(
                        "undefined: one outcome only",
                        (0.1, 0.5),
                        (FONT, 12),
                    )))
                    .map_err(plot_error)?;
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    BLUE.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(legend.as_str())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLUE.stroke_width(2)));
            chart
                .configure_series_labels()
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .position(if diagonal {
                    SeriesLabelPosition::LowerRight
                } else {
                    SeriesLabelPosition::LowerLeft
                })
                .draw()
                .map_err(plot_error)?;
        }
        Ok(())
    })
}

/// Names of the 15 outputs: the findings, then abnormal.
fn output_names() -> Vec<String> {
    LABELS
        .iter()
        .map(|l| l.replace('_', " "))
        .chain(std::iter::once("Abnormal (binary head)".to_string()))
        .collect()
}

/// One panel per output: its curve and, in its legend, the curve's summary.
fn output_curves(
    scores: &SplitScores,
    curve: fn(&[f64], &[bool]) -> Option<Vec<chexvision_metrics::CurvePoint>>,
    summary: fn(&[f64], &[bool]) -> Option<f64>,
    summary_name: &str,
) -> Vec<Curve> {
    output_names()
        .into_iter()
        .enumerate()
        .map(|(c, name)| {
            let (s, l) = (scores.probability(c), scores.label(c));
            let points = curve(&s, &l)
                .map(|p| p.iter().map(|p| (p.x, p.y)).collect())
                .unwrap_or_default();
            let legend = summary(&s, &l).map_or(format!("{summary_name} undefined"), |a| {
                format!("{summary_name} {a:.3}")
            });
            (name, points, legend)
        })
        .collect()
}

pub fn roc_png(scores: &SplitScores) -> Result<Vec<u8>, EvalError> {
    let curves = output_curves(scores, roc_curve, chexvision_metrics::roc_auc, "AUC");
    curve_grid(&curves, "false positive rate", "true positive rate", true)
}

pub fn pr_png(scores: &SplitScores) -> Result<Vec<u8>, EvalError> {
    let curves = output_curves(
        scores,
        precision_recall_curve,
        chexvision_metrics::average_precision,
        "AP",
    );
    curve_grid(&curves, "recall", "precision", false)
}

pub fn reliability_png(calibration: &Calibration) -> Result<Vec<u8>, EvalError> {
    canvas(640, 560, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "Reliability of the binary head ({} bins, ECE {:.3})",
                    calibration.n_bins, calibration.ece
                ),
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("mean predicted probability")
            .y_desc("observed frequency of abnormal")
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(plot_error)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.mix(0.3)));
        let points: Vec<(f64, f64)> = calibration
            .bins
            .iter()
            .map(|b| (b.mean_probability, b.observed_frequency))
            .collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("model")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
            .map_err(plot_error)?;
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(plot_error)
    })
}

pub fn confusion_png(matrix: [[u64; 2]; 2], threshold: f64) -> Result<Vec<u8>, EvalError> {
    canvas(520, 520, |root| {
        root.draw(&Text::new(
            format!("Binary head at threshold {threshold:.3}"),
            (20, 14),
            (FONT, 20),
        ))
        .map_err(plot_error)?;
        let max = matrix.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
        let names = ["normal", "abnormal"];
        let (x0, y0, cell) = (130i32, 90i32, 170i32);
        for (t, row) in matrix.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                let shade = 0.15 + 0.75 * count as f64 / max;
                let (x, y) = (x0 + p as i32 * cell, y0 + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    BLUE.mix(shade).filled(),
                ))
                .map_err(plot_error)?;
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK))
                    .map_err(plot_error)?;
                let color = if shade > 0.55 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    count.to_string(),
                    (
                        x + cell / 2 - 8 * count.to_string().len() as i32,
                        y + cell / 2 - 10,
                    ),
                    (FONT, 26).into_font().color(&color),
                ))
                .map_err(plot_error)?;
            }
        }
        for (i, name) in names.iter().enumerate() {
            root.draw(&Text::new(
                format!("predicted {name}"),
                (x0 + i as i32 * cell + 20, y0 - 26),
                (FONT, 15),
            ))
            .map_err(plot_error)?;
            root.draw(&Text::new(
                format!("true {name}"),
                (10, y0 + i as i32 * cell + cell / 2 - 8),
                (FONT, 15),
            ))
            .map_err(plot_error)?;
        }
        Ok(())
    })
}

/// One epoch of `history.json` as the plot needs it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct HistoryPoint {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_macro_auc: Option<f64>,
}

pub fn history_png(history: &[HistoryPoint]) -> Result<Vec<u8>, EvalError> {
    canvas(1100, 420, |root| {
        let (left, right) = root.split_horizontally(550);
        let epochs = history.iter().map(|h| h.epoch).max().unwrap_or(0) as f64 + 0.5;
        let loss: Vec<(f64, f64)> = history
            .iter()
            .filter(|h| h.train_loss.is_finite())
            .map(|h| (f64::from(h.epoch), h.train_loss))
            .collect();
        let max_loss = loss.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-6) * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("Training loss", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..epochs, 0f64..max_loss)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(loss.iter().copied(), RED.stroke_width(2)))
            .map_err(plot_error)?;
        chart
            .draw_series(loss.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(plot_error)?;
        let auc: Vec<(f64, f64)> = history
            .iter()
            .filter_map(|h| h.val_macro_auc.map(|a| (f64::from(h.epoch), a)))
            .collect();
        let mut chart = ChartBuilder::on(&right)
            .caption("Validation macro AUC", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5f64..epochs, 0.4f64..1f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(auc.iter().copied(), BLUE.stroke_width(2)))
            .map_err(plot_error)?;
        chart
            .draw_series(auc.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
            .map_err(plot_error)?;
        Ok(())
    })
}

pub fn auc_intervals_png(report: &Report) -> Result<Vec<u8>, EvalError> {
    let n = LABELS.len();
    canvas(900, 620, |root| {
        let title = if report.dataset.synthetic {
            "Per-finding test AUC with 95 % interval (SYNTHETIC data)"
        } else {
            "Per-finding test AUC with 95 % interval"
        };
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(150)
            .build_cartesian_2d(0.4f64..1.0f64, -0.5f64..(n as f64 - 0.5))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("AUC")
            .y_labels(n)
            .y_label_formatter(&|y| {
                let i = y.round() as usize;
                LABELS
                    .get(n.saturating_sub(1).saturating_sub(i))
                    .map_or(String::new(), |l| l.replace('_', " "))
            })
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_error)?;
        // Row 0 at the top: finding i sits at y = n - 1 - i.
        let y = |i: usize| (n - 1 - i) as f64;
        chart
            .draw_series(report.findings.iter().enumerate().filter_map(|(i, f)| {
                f.auc_interval.map(|[lo, hi]| {
                    PathElement::new(vec![(lo, y(i)), (hi, y(i))], BLUE.stroke_width(2))
                })
            }))
            .map_err(plot_error)?;
        chart
            .draw_series(
                report
                    .findings
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| f.auc.map(|a| Circle::new((a, y(i)), 5, BLUE.filled()))),
            )
            .map_err(plot_error)?
            .label("this model (95 % patient-bootstrap interval)")
            .legend(|(x, y)| Circle::new((x + 7, y), 5, BLUE.filled()));
        chart
            .draw_series(
                CHEXNET_AUC
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| Cross::new((a, y(i)), 5, RED.stroke_width(2))),
            )
            .map_err(plot_error)?
            .label("CheXNet, published (Rajpurkar et al. 2017; its own test split)")
            .legend(|(x, y)| Cross::new((x + 7, y), 5, RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(plot_error)
    })
}

/// Every figure of a report, by file name.
pub fn all_plots(
    report: &Report,
    scores: &SplitScores,
    history: &[HistoryPoint],
) -> Result<Vec<(&'static str, Vec<u8>)>, EvalError> {
    let mut plots = vec![
        ("roc.png", roc_png(scores)?),
        ("pr.png", pr_png(scores)?),
        ("auc_intervals.png", auc_intervals_png(report)?),
    ];
    if let Some(cal) = &report.calibration {
        plots.push(("reliability.png", reliability_png(cal)?));
    }
    let at = report
        .binary
        .at_validation_threshold
        .as_ref()
        .unwrap_or(&report.binary.at_half);
    plots.push((
        "confusion_binary.png",
        confusion_png(at.confusion_matrix, at.threshold)?,
    ));
    if !history.is_empty() {
        plots.push(("history.png", history_png(history)?));
    }
    Ok(plots)
}
