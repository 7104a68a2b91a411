//! The learning curve `mrrec eval --plot` draws: validation reward (left
//! axis) and test NDCG@10 (right axis) per policy version, as a PNG. Each
//! version's NDCG@10 carries its 95 % bootstrap interval, and reference rows
//! (the `rule` policy, the best baseline) are dashed horizontal lines. Both
//! axes start at 0, so a difference inside the noise looks like one.
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
    /// The 95 % interval of `test_ndcg_at_10`, drawn as an error bar.
    pub test_ndcg_interval: Option<(f64, f64)>,
}

/// A row drawn as a horizontal line on the NDCG@10 axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub label: String,
    pub ndcg_at_10: f64,
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
/// Colours of the reference lines, in order.
const REFERENCE_COLOURS: [RGBColor; 3] = [
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `points` (sorted by version here) into an RGB buffer, 3 bytes per
/// pixel, `WIDTH` × `HEIGHT`.
pub fn render(
    points: &[CurvePoint],
    references: &[Reference],
    title: &str,
) -> Result<Vec<u8>, PlotError> {
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
    let references: Vec<&Reference> = references
        .iter()
        .filter(|r| r.ndcg_at_10.is_finite())
        .take(REFERENCE_COLOURS.len())
        .collect();
    let intervals: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|p| {
            p.test_ndcg_interval
                .map(|(lo, hi)| (p.version as f64, lo, hi))
        })
        .filter(|(_, lo, hi)| lo.is_finite() && hi.is_finite())
        .collect();
    let reward_axis = nice_range(rewards.iter().map(|p| p.1));
    let ndcg_axis = nice_range(
        ndcgs
            .iter()
            .map(|p| p.1)
            .chain(references.iter().map(|r| r.ndcg_at_10))
            .chain(intervals.iter().flat_map(|i| [i.1, i.2])),
    );

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
        for (reference, colour) in references.iter().zip(REFERENCE_COLOURS) {
            let y = reference.ndcg_at_10;
            let dashes = 24;
            let step = (x_range.end - x_range.start) / dashes as f64;
            for d in (0..dashes).step_by(2) {
                let x0 = x_range.start + step * d as f64;
                right
                    .draw_series(LineSeries::new(
                        [(x0, y), (x0 + step, y)],
                        colour.stroke_width(2),
                    ))
                    .map_err(&draw)?;
            }
        }
        for &(x, lo, hi) in &intervals {
            let cap = (x_range.end - x_range.start) / 60.0;
            for segment in [
                [(x, lo), (x, hi)],
                [(x - cap, lo), (x + cap, lo)],
                [(x - cap, hi), (x + cap, hi)],
            ] {
                right
                    .draw_series(LineSeries::new(segment, NDCG_COLOUR.stroke_width(1)))
                    .map_err(&draw)?;
            }
        }
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
    let (title, scale) = fit_title(title);
    canvas.text_centred((WIDTH / 2) as i32, 18, &title, INK, scale);
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
    canvas.text(
        AREA.0,
        HEIGHT as i32 - 16,
        "^ test NDCG@10 (bars: 95% bootstrap interval)",
        NDCG_COLOUR,
        1,
    );
    for (i, (reference, colour)) in references.iter().zip(REFERENCE_COLOURS).enumerate() {
        canvas.text(
            AREA.0 + 400,
            HEIGHT as i32 - 32 + 16 * (i as i32 % 2) - 16 * (i as i32 / 2),
            &format!("-- {} {:.4}", reference.label, reference.ndcg_at_10),
            colour,
            1,
        );
    }
    canvas.text(8, AREA.1 - 22, "reward", REWARD_COLOUR, 1);
    canvas.text(AREA.2 + 8, AREA.1 - 22, "NDCG@10", NDCG_COLOUR, 1);
    Ok(buffer)
}

/// `title` as it fits the picture's width: at double size when it can, else
/// at single size, else cut at the front (the end of a path names it best).
fn fit_title(title: &str) -> (String, i32) {
    let room = (WIDTH as usize - 16) / 8;
    let chars: Vec<char> = title.chars().collect();
    if chars.len() <= room / 2 {
        return (title.to_owned(), 2);
    }
    if chars.len() <= room {
        return (title.to_owned(), 1);
    }
    let tail: String = chars[chars.len() - (room - 3)..].iter().collect();
    (format!("...{tail}"), 1)
}

/// Draws the curve (see [`render`]) and writes it to `path` as a PNG.
pub fn write_png(
    points: &[CurvePoint],
    references: &[Reference],
    title: &str,
    path: &Path,
) -> Result<(), PlotError> {
    let pixels = render(points, references, title)?;
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

/// An axis range from 0 (or below, for negative values) to 15 % above the
/// largest value: never zoomed onto the values, so noise stays small. An
/// empty series gets 0..1.
fn nice_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let top = if hi > 0.0 { hi * 1.15 } else { 1.0 };
    let bottom = if lo < 0.0 { lo * 1.15 } else { 0.0 };
    (bottom, top.max(bottom + 1e-3))
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
            test_ndcg_interval: None,
        }
    }

    #[test]
    fn references_intervals_and_a_long_title_are_drawn_and_axes_start_at_zero() {
        let mut with_bar = point(1, Some(2.2), Some(0.10));
        with_bar.test_ndcg_interval = Some((0.08, 0.12));
        let points = [point(0, Some(1.7), Some(0.09)), with_bar];
        let references = [
            Reference {
                label: "rule".into(),
                ndcg_at_10: 0.095,
            },
            Reference {
                label: "best baseline (hybrid)".into(),
                ndcg_at_10: 0.12,
            },
        ];
        let plain = render(&points, &[], "t").unwrap();
        let drawn = render(&points, &references, "t").unwrap();
        for colour in &REFERENCE_COLOURS[..2] {
            assert!(count(&drawn, *colour) > 200, "a reference line");
            assert_eq!(count(&plain, *colour), 0);
        }
        // Axes from 0: values 0.09..0.12 sit in the top part, not spread out.
        assert_eq!(nice_range([0.09, 0.12].into_iter()).0, 0.0);
        assert_eq!(nice_range([1.7, 2.2].into_iter()).0, 0.0);
        let long = "mrrec eval: /a/very/long/path/to/a/dataset/somewhere/deep/inside/a/home/directory/requests.jsonl and more";
        let (fitted, scale) = fit_title(long);
        assert_eq!(scale, 1);
        assert!(
            fitted.chars().count() * 8 <= WIDTH as usize - 16,
            "{fitted}"
        );
        assert!(fitted.ends_with("and more"));
        assert_eq!(fit_title("short"), ("short".to_owned(), 2));
    }

    #[test]
    fn both_series_are_drawn_and_a_missing_value_is_skipped() {
        let pixels = render(
            &[
                point(2, None, Some(0.13)),
                point(0, Some(1.7), Some(0.08)),
                point(1, Some(2.2), Some(0.10)),
            ],
            &[],
            "test",
        )
        .unwrap();
        assert_eq!(pixels.len(), (WIDTH * HEIGHT * 3) as usize);
        assert!(count(&pixels, REWARD_COLOUR) > 500, "the reward line");
        assert!(count(&pixels, NDCG_COLOUR) > 500, "the NDCG line");
        let only_reward = render(
            &[point(0, Some(1.0), None), point(1, Some(2.0), None)],
            &[],
            "t",
        )
        .unwrap();
        // Axis labels stay in the NDCG colour; no line or marker does.
        assert!(count(&only_reward, NDCG_COLOUR) + 500 < count(&pixels, NDCG_COLOUR));
    }

    #[test]
    fn a_single_version_and_odd_values_still_draw() {
        render(&[point(0, Some(f64::NAN), Some(0.0))], &[], "one").unwrap();
        render(&[point(3, Some(-2.0), Some(-2.0))], &[], "negative").unwrap();
    }

    #[test]
    fn nothing_to_plot_is_an_error() {
        assert!(matches!(render(&[], &[], "t"), Err(PlotError::Empty)));
        assert!(matches!(
            render(&[point(0, None, None)], &[], "t"),
            Err(PlotError::Empty)
        ));
    }

    #[test]
    fn the_png_decodes_to_the_drawn_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.png");
        write_png(&[point(0, Some(1.0), Some(0.1))], &[], "t", &path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (WIDTH, HEIGHT));
        let missing = dir.path().join("no/such/dir/curve.png");
        let err = write_png(&[point(0, Some(1.0), None)], &[], "t", &missing).unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}
