//! Line charts as PNG, drawn with plotters into memory and encoded with `png`.
//!
//! Text is rendered with DejaVu Sans embedded in the binary (the `dejavu` crate; the Bitstream
//! Vera / DejaVu licence permits embedding and redistribution), so charts look the same on a
//! machine without any system font or fontconfig.

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::OnceLock;

pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 540;
const FONT: &str = "sans-serif";

/// Ten colours that stay distinct from each other and readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Format of the x tick labels.
    pub x_format: fn(f64) -> String,
    pub y_format: fn(f64) -> String,
}

/// 1234567 → "1.23M": token counts read at a glance.
pub fn si(x: f64) -> String {
    let a = x.abs();
    let (v, s) = if a >= 1e9 {
        (x / 1e9, "B")
    } else if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let t = format!("{v:.2}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    format!("{t}{s}")
}

/// Tick labels with about four significant digits (0.0025, 0.5, 206), very small or large
/// values in scientific notation.
pub fn plain(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-4..1e6).contains(&a) {
        return format!("{x:.1e}");
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    let t = format!("{x:.decimals$}");
    if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    }
}

fn font_ready() -> Result<()> {
    static READY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Axis range covering `values` with a margin; a flat or single value still gets a range.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return None;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    Some((lo - pad, hi + pad))
}

/// Renders `chart` to PNG bytes. Fails when no series has a finite point.
pub fn render(chart: &Chart) -> Result<Vec<u8>> {
    font_ready()?;
    let series: Vec<Series> = chart
        .series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (Some((x0, x1)), Some((y0, y1))) = (range(all().map(|p| p.0)), range(all().map(|p| p.1))) else {
        return Err(anyhow!("chart {:?} has no data", chart.title));
    };
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let mut c = ChartBuilder::on(&root)
            .caption(&chart.title, (FONT, 24))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow!("{e:?}"))?;
        c.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .x_label_formatter(&|x| (chart.x_format)(*x))
            .y_label_formatter(&|y| (chart.y_format)(*y))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        for (i, s) in series.iter().enumerate() {
            let (r, g, b) = PALETTE[i % PALETTE.len()];
            let color = RGBColor(r, g, b).to_rgba();
            c.draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
            // Sparse series (evaluations, validation points) get markers so single points show.
            if s.points.len() <= 20 {
                c.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| anyhow!("{e:?}"))?;
            }
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .label_font((FONT, 14))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    encode_png(&rgb, WIDTH, HEIGHT)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
    }
    Ok(out)
}

/// Renders and writes `chart` to `path` atomically.
pub fn write(path: &Path, chart: &Chart) -> Result<()> {
    jarip_ledger::atomic_write(path, &render(chart)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_valid_png_with_text() {
        let chart = Chart {
            title: "loss".into(),
            x_label: "tokens".into(),
            y_label: "nats".into(),
            series: vec![
                Series {
                    name: "train".into(),
                    points: (0..50).map(|i| (i as f64 * 1000.0, 9.0 - i as f64 * 0.1)).collect(),
                },
                Series { name: "one point".into(), points: vec![(25_000.0, 6.0)] },
            ],
            x_format: si,
            y_format: plain,
        };
        let bytes = render(&chart).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        // Not blank: lines, markers and glyphs were drawn.
        let dark = buf.chunks(3).filter(|p| p.iter().all(|&c| c < 100)).count();
        assert!(dark > 500, "only {dark} dark pixels");
    }

    #[test]
    fn no_data_is_an_error_not_an_empty_image() {
        let chart = Chart {
            title: "empty".into(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![Series { name: "nan".into(), points: vec![(1.0, f64::NAN)] }],
            x_format: plain,
            y_format: plain,
        };
        assert!(render(&chart).is_err());
    }

    #[test]
    fn tick_formats() {
        assert_eq!(si(421_888.0), "421.89k");
        assert_eq!(si(2_000_000.0), "2M");
        assert_eq!(plain(0.5), "0.5");
        assert_eq!(plain(0.0025), "0.0025");
        assert_eq!(plain(0.00275), "0.00275");
        assert_eq!(plain(206.0), "206");
        assert_eq!(plain(0.00003), "3.0e-5");
    }
}
