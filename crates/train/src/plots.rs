//! PNG plots of a run: training curves and the test-set confusion matrix.
//!
//! Text is drawn with DejaVu Sans compiled into the binary (`assets/fonts`), so plots render
//! the same on a bare container as on a desktop.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use model::CLASSES;
use model::eval::Evaluation;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::metrics_log::EpochRecord;

/// Loss and accuracy per epoch ([`curves`]), drawn when the run has finished an epoch.
pub const CURVES_FILE: &str = "curves.png";
/// The test set's confusion matrix ([`confusion`]), drawn when the run was tested.
pub const CONFUSION_FILE: &str = "confusion.png";
/// The test set's accuracy per class ([`per_class`]), drawn when the run was tested.
pub const PER_CLASS_FILE: &str = "per_class.png";

static FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| ())
            .expect("the bundled font parses");
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// Writes every plot a run has data for into `dir`.
pub fn write_all(dir: &Path, epochs: &[EpochRecord], eval: Option<&Evaluation>) -> Result<()> {
    if !epochs.is_empty() {
        curves(&dir.join(CURVES_FILE), epochs).context("training curves")?;
    }
    if let Some(e) = eval {
        confusion(&dir.join(CONFUSION_FILE), e).context("confusion matrix")?;
        per_class(&dir.join(PER_CLASS_FILE), e).context("per-class accuracy")?;
    }
    Ok(())
}

/// Loss and accuracy per epoch, train and validation, side by side.
pub fn curves(path: &Path, epochs: &[EpochRecord]) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let last = epochs.iter().map(|e| e.epoch).max().unwrap_or(1) as f64;
    let finite = |v: f64| if v.is_finite() { Some(v) } else { None };

    let max_loss = epochs
        .iter()
        .flat_map(|e| [e.train_loss, e.valid_loss])
        .filter_map(finite)
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("Loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.5..last + 0.5, 0.0..max_loss.max(0.1))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    series(&mut chart, epochs, |e| e.train_loss, BLUE, "train")?;
    series(&mut chart, epochs, |e| e.valid_loss, RED, "validation")?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;

    let mut chart = ChartBuilder::on(&right)
        .caption("Accuracy (%)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.5..last + 0.5, 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    series(&mut chart, epochs, |e| e.train_accuracy, BLUE, "train")?;
    series(&mut chart, epochs, |e| e.valid_accuracy, RED, "validation")?;
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn series(
    chart: &mut Chart<'_, '_>,
    epochs: &[EpochRecord],
    value: impl Fn(&EpochRecord) -> f64,
    color: RGBColor,
    label: &str,
) -> Result<()> {
    let points: Vec<(f64, f64)> = epochs
        .iter()
        .map(|e| (e.epoch as f64, value(e)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    chart
        .draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )
        .map_err(err)?;
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// The confusion matrix as a heat map with counts, rows true class, columns predicted.
pub fn confusion(path: &Path, e: &Evaluation) -> Result<()> {
    register_font();
    let n = CLASSES.len();
    let cell = 56u32;
    let (left, top) = (110u32, 70u32);
    let size = (left + cell * n as u32 + 20, top + cell * n as u32 + 90);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "Test confusion matrix — top-1 {:.2}% on {} images",
        e.accuracy * 100.0,
        e.images
    );
    root.draw(&Text::new(title, (left as i32, 20), ("sans-serif", 20)))
        .map_err(err)?;
    let max = e
        .confusion
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let label = ("sans-serif", 13).into_font();
    for (i, row) in e.confusion.iter().enumerate() {
        let y = (top + cell * i as u32) as i32;
        root.draw(&Text::new(
            CLASSES[i],
            (8, y + cell as i32 / 2 - 7),
            label.clone(),
        ))
        .map_err(err)?;
        for (j, &count) in row.iter().enumerate() {
            let x = (left + cell * j as u32) as i32;
            let t = count as f64 / max;
            let shade = (255.0 * (1.0 - t)) as u8;
            let fill = if i == j {
                RGBColor(shade, 255 - (t * 80.0) as u8, shade)
            } else {
                RGBColor(255, shade, shade)
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32, y + cell as i32)],
                fill.filled(),
            ))
            .map_err(err)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32, y + cell as i32)],
                BLACK.mix(0.2),
            ))
            .map_err(err)?;
            let color = if t > 0.6 { WHITE } else { BLACK };
            root.draw(&Text::new(
                count.to_string(),
                (x + 8, y + cell as i32 / 2 - 7),
                label.clone().color(&color),
            ))
            .map_err(err)?;
        }
    }
    let bottom = (top + cell * n as u32 + 8) as i32;
    for (j, class) in CLASSES.iter().enumerate() {
        let x = (left + cell * j as u32) as i32 + 2;
        let short = &class[..class.len().min(7)];
        root.draw(&Text::new(short, (x, bottom), label.clone()))
            .map_err(err)?;
    }
    root.draw(&Text::new(
        "predicted →",
        (left as i32, bottom + 28),
        label.clone(),
    ))
    .map_err(err)?;
    root.draw(&Text::new("true ↓", (8, top as i32 - 22), label))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Test accuracy of each class as bars.
pub fn per_class(path: &Path, e: &Evaluation) -> Result<()> {
    register_font();
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Test accuracy per class (%)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d((0..CLASSES.len() - 1).into_segmented(), 0.0..100.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .label_style(("sans-serif", 13))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => CLASSES.get(*i).copied().unwrap_or("").to_string(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(e.per_class.iter().enumerate().map(|(i, (_, acc))| {
            let v = acc.unwrap_or(0.0) * 100.0;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v),
                ],
                RGBColor(70, 130, 180).filled(),
            );
            bar.set_margin(0, 0, 8, 8);
            bar
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
