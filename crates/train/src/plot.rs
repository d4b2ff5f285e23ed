//! The loss curve of a run, `log.csv` -> PNG, drawn with plotters. The font
//! (DejaVu Sans, see assets/DejaVuSans-LICENSE.txt) is built in, so the
//! picture does not depend on the fonts a machine has.

use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// (step, training loss, validation loss if measured) from a `log.csv`.
pub fn read_log(csv: &Path) -> Result<Vec<(u64, f32, Option<f32>)>, String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let parse = |k: usize| f.get(k).and_then(|s| s.parse::<f64>().ok());
        match (parse(0), parse(1)) {
            (Some(step), Some(loss)) => {
                rows.push((step as u64, loss as f32, parse(2).map(|v| v as f32)))
            }
            _ => return Err(format!("{}: line {}: not a log row", csv.display(), i + 1)),
        }
    }
    Ok(rows)
}

/// Draws training loss (line) and validation loss (points) against step.
pub fn plot_losses(csv: &Path, png: &Path) -> Result<(), String> {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let rows = read_log(csv)?;
    if rows.is_empty() {
        return Err(format!("{}: no steps logged yet", csv.display()));
    }
    let err = |e: String| format!("{}: {e}", png.display());
    let last = rows.last().map(|r| r.0).unwrap_or(0).max(1);
    let all = rows.iter().flat_map(|r| std::iter::once(r.1).chain(r.2));
    let (lo, hi) = all.fold((f32::MAX, f32::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let root = BitMapBackend::new(png, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0u64..last, (lo - 0.1)..(hi + 0.1))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy (nats)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(rows.iter().map(|r| (r.0, r.1)), &BLUE))
        .map_err(|e| err(e.to_string()))?
        .label("training")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(
            rows.iter()
                .filter_map(|r| r.2.map(|v| Circle::new((r.0, v), 4, RED.filled()))),
        )
        .map_err(|e| err(e.to_string()))?
        .label("validation")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, RED.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}
