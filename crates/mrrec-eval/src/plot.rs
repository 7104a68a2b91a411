//! The learning curve `mrrec eval --plot` draws: validation reward (left
//! axis) and test NDCG@10 (right axis) per policy version, as a PNG.
//! plotters draws the lines; text comes from a built-in public-domain 8×8
//! bitmap font (font8x8), so the picture needs no system fonts and is the
//! same on every machine.

use plotters::prelude::*;
use std::path::Path;

/// One policy version's point on the curve (either value may be missing).
#[derive(Debug, Clone, PartialEq)]
pub struct CurvePoint {
    pub version: u32,
    pub validation_reward: Option<f64>,
    pub test_ndcg_at_10: Option<f64>,
}

/// Why a curve could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("nothing to plot: no policy version has a validation reward or a test NDCG@10")]
    Empty,
    #[error("drawing the curve: {0}")]
    Draw(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding the PNG: {0}")]
    Encode(#[from] png::EncodingError),
}

const WIDTH: u32 = 880;
const HEIGHT: u32 = 520;
/// Plot area: left, top, right, bottom (pixels).
const AREA: (i32, i32, i32, i32) = (96, 56, 784, 440);
const REWARD_COLOUR: RGBColor = RGBColor(31, 119, 180);
const NDCG_COLOUR: RGBColor = RGBColor(214, 39, 40);
const INK: RGBColor = RGBColor(40, 40, 40);
const GRID: RGBColor = RGBColor(225, 225, 225);

/// Draws `points` (sorted by version here) into an RGB buffer, 3 bytes per
/// pixel, `WIDTH` × `HEIGHT`.
pub fn render(points: &[CurvePoint], title: &str) -> Result<Vec<u8>, PlotError> {
    let mut points: Vec<&CurvePoint> = points
        .iter()
        .filter(|p| p.validation_reward.is_some() || p.test_ndcg_at_10.is_some())
        .collect();
    if points.is_empty() {
        return Err(PlotError::Empty);
    }
    points.sort_by_key(|p| p.version);
    let versions = (
        points[0].version as f64,
        points[points.len() - 1].version as f64,
    );
    let x_range = if versions.1 > versions.0 {
        versions.0 - 0.25..versions.1 + 0.25
    } else {
        versions.0 - 1.0..versions.0 + 1.0
    };
    let rewards: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.validation_reward.map(|r| (p.version as f64, r)))
        .filter(|(_, r)| r.is_finite())
        .collect();
    let ndcgs: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.test_ndcg_at_10.map(|n| (p.version as f64, n)))
        .filter(|(_, n)| n.is_finite())
        .collect();
    let reward_axis = nice_range(rewards.iter().map(|p| p.1));
    let ndcg_axis = nice_range(ndcgs.iter().map(|p| p.1));

    let mut buffer = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let draw = |e: DrawingAreaErrorKind<_>| PlotError::Draw(e.to_string());
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, HEIGHT)).into_drawing_area();
        let area = root.margin(
            AREA.1 as u32,
            HEIGHT - AREA.3 as u32,
            AREA.0 as u32,
            WIDTH - AREA.2 as u32,
        );
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(x_range.clone(), reward_axis.0..reward_axis.1)
            .map_err(&draw)?;
        for i in 0..=TICKS {
            let y = reward_axis.0 + (reward_axis.1 - reward_axis.0) * i as f64 / TICKS as f64;
            chart
                .draw_series(LineSeries::new(
                    [(x_range.start, y), (x_range.end, y)],
                    GRID,
                ))
                .map_err(&draw)?;
        }
        if !rewards.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    rewards.clone(),
                    REWARD_COLOUR.stroke_width(3),
                ))
                .map_err(&draw)?;
            chart
                .draw_series(
                    rewards
                        .iter()
                        .map(|&p| Circle::new(p, 5, REWARD_COLOUR.filled())),
                )
                .map_err(&draw)?;
        }
        let mut right = ChartBuilder::on(&area)
            .build_cartesian_2d(x_range.clone(), ndcg_axis.0..ndcg_axis.1)
            .map_err(&draw)?;
        if !ndcgs.is_empty() {
            right
                .draw_series(LineSeries::new(ndcgs.clone(), NDCG_COLOUR.stroke_width(3)))
                .map_err(&draw)?;
            right
                .draw_series(
                    ndcgs
                        .iter()
                        .map(|&p| TriangleMarker::new(p, 7, NDCG_COLOUR.filled())),
                )
                .map_err(&draw)?;
        }
        root.draw(&Rectangle::new(
            [(AREA.0, AREA.1), (AREA.2, AREA.3)],
            INK.stroke_width(1),
        ))
        .map_err(&draw)?;
        root.present().map_err(&draw)?;
    }

    let mut canvas = Canvas {
        buffer: &mut buffer,
    };
    canvas.text_centred((WIDTH / 2) as i32, 18, title, INK, 2);
    let span = (AREA.3 - AREA.1) as f64;
    for i in 0..=TICKS {
        let y = AREA.3 - (span * i as f64 / TICKS as f64).round() as i32;
        let left = reward_axis.0 + (reward_axis.1 - reward_axis.0) * i as f64 / TICKS as f64;
        let right = ndcg_axis.0 + (ndcg_axis.1 - ndcg_axis.0) * i as f64 / TICKS as f64;
        let label = format!("{left:.2}");
        canvas.text(
            AREA.0 - 8 - 8 * label.len() as i32,
            y - 4,
            &label,
            REWARD_COLOUR,
            1,
        );
        canvas.text(AREA.2 + 8, y - 4, &format!("{right:.3}"), NDCG_COLOUR, 1);
    }
    let x_span = (AREA.2 - AREA.0) as f64;
    for p in &points {
        let x = AREA.0
            + ((p.version as f64 - x_range.start) / (x_range.end - x_range.start) * x_span).round()
                as i32;
        canvas.text_centred(x, AREA.3 + 10, &format!("v{:04}", p.version), INK, 1);
    }
    canvas.text_centred(
        (AREA.0 + AREA.2) / 2,
        AREA.3 + 26,
        "policy version (v0000 = untrained)",
        INK,
        1,
    );
    canvas.text(
        AREA.0,
        HEIGHT as i32 - 32,
        "o validation reward (served, mean)",
        REWARD_COLOUR,
        1,
    );
    canvas.text(AREA.0, HEIGHT as i32 - 16, "^ test NDCG@10", NDCG_COLOUR, 1);
    canvas.text(8, AREA.1 - 22, "reward", REWARD_COLOUR, 1);
    canvas.text(AREA.2 + 8, AREA.1 - 22, "NDCG@10", NDCG_COLOUR, 1);
    Ok(buffer)
}

/// Draws the curve (see [`render`]) and writes it to `path` as a PNG.
pub fn write_png(points: &[CurvePoint], title: &str, path: &Path) -> Result<(), PlotError> {
    let pixels = render(points, title)?;
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
    }
    std::fs::write(path, bytes).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Horizontal grid lines (and tick labels) per axis.
const TICKS: usize = 5;

/// An axis range around `values` with some headroom; a flat or empty series
/// gets a unit-wide range.
fn nice_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.15)
        .max(hi.abs().max(lo.abs()) * 0.05)
        .max(1e-3);
    (
        (lo - pad).max(if lo >= 0.0 { 0.0 } else { f64::MIN }),
        hi + pad,
    )
}

/// Text on the finished RGB buffer.
struct Canvas<'a> {
    buffer: &'a mut [u8],
}

impl Canvas<'_> {
    fn text(&mut self, x: i32, y: i32, text: &str, colour: RGBColor, scale: i32) {
        for (i, c) in text.chars().enumerate() {
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(c as usize)
                .copied()
                .unwrap_or(font8x8::legacy::BASIC_LEGACY[b'?' as usize]);
            let left = x + i as i32 * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.pixel(
                                    left + col * scale + dx,
                                    y + row as i32 * scale + dy,
                                    colour,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn text_centred(&mut self, x: i32, y: i32, text: &str, colour: RGBColor, scale: i32) {
        let width = text.chars().count() as i32 * 8 * scale;
        self.text(x - width / 2, y, text, colour, scale);
    }

    fn pixel(&mut self, x: i32, y: i32, colour: RGBColor) {
        if x < 0 || y < 0 || x >= WIDTH as i32 || y >= HEIGHT as i32 {
            return;
        }
        let at = ((y as u32 * WIDTH + x as u32) * 3) as usize;
        self.buffer[at..at + 3].copy_from_slice(&[colour.0, colour.1, colour.2]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(pixels: &[u8], colour: RGBColor) -> usize {
        pixels
            .chunks(3)
            .filter(|p| p == &[colour.0, colour.1, colour.2])
            .count()
    }

    fn point(version: u32, reward: Option<f64>, ndcg: Option<f64>) -> CurvePoint {
        CurvePoint {
            version,
            validation_reward: reward,
            test_ndcg_at_10: ndcg,
        }
    }

    #[test]
    fn both_series_are_drawn_and_a_missing_value_is_skipped() {
        let pixels = render(
            &[
                point(2, None, Some(0.13)),
                point(0, Some(1.7), Some(0.08)),
                point(1, Some(2.2), Some(0.10)),
            ],
            "test",
        )
        .unwrap();
        assert_eq!(pixels.len(), (WIDTH * HEIGHT * 3) as usize);
        assert!(count(&pixels, REWARD_COLOUR) > 500, "the reward line");
        assert!(count(&pixels, NDCG_COLOUR) > 500, "the NDCG line");
        let only_reward =
            render(&[point(0, Some(1.0), None), point(1, Some(2.0), None)], "t").unwrap();
        // Axis labels stay in the NDCG colour; no line or marker does.
        assert!(count(&only_reward, NDCG_COLOUR) < count(&pixels, NDCG_COLOUR) / 2);
    }

    #[test]
    fn a_single_version_and_odd_values_still_draw() {
        render(&[point(0, Some(f64::NAN), Some(0.0))], "one").unwrap();
        render(&[point(3, Some(-2.0), Some(-2.0))], "negative").unwrap();
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        assert!(matches!(render(&[], "t"), Err(PlotError::Empty)));
        assert!(matches!(
            render(&[point(0, None, None)], "t"),
            Err(PlotError::Empty)
        ));
    }

    #[test]
    fn the_png_decodes_to_the_drawn_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        write_png(&[point(0, Some(1.0), Some(0.1))], "t", &path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (WIDTH, HEIGHT));
        let missing = dir.path().join("no/such/dir/curve.png");
        let err = write_png(&[point(0, Some(1.0), None)], "t", &missing).unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}
