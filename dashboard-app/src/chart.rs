//! Small line charts as SVG path data. The UI only places the paths in an `<svg>`;
//! scaling, gaps and the axis ceiling are decided here.

use crate::series::Series;

/// Drawing area of every chart, in SVG user units (the element scales to its box).
pub const WIDTH: f64 = 240.0;
pub const HEIGHT: f64 = 48.0;

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// SVG path data (`M…L…`), empty when there is nothing to draw.
    pub path: String,
    /// CSS class giving its colour and dash (so lines differ by more than colour).
    pub class: &'static str,
    /// Legend text, with the latest value.
    pub label: String,
}

/// A chart ready to draw.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: &'static str,
    /// Top of the y axis, formatted.
    pub max_label: String,
    pub lines: Vec<Line>,
}

/// The smallest "nice" number (1, 2 or 5 × 10ⁿ) at or above `v`; 1 for nothing.
pub fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        let c = step * mag;
        // Tolerate float noise: 0.3 / 0.1 must not round up past 5.
        if c >= v * (1.0 - 1e-9) {
            return c;
        }
    }
    10.0 * mag
}

/// Path data for `values` (oldest first) laid right-aligned on `slots` evenly spaced x
/// positions, so a chart fills from the right as history accumulates. `None` values
/// break the line; values are clamped to `0..=max`.
pub fn path(values: &[Option<f64>], slots: usize, max: f64) -> String {
    let slots = slots.max(values.len()).max(2);
    let first_slot = slots - values.len();
    let dx = WIDTH / (slots - 1) as f64;
    let max = if max > 0.0 { max } else { 1.0 };
    let mut out = String::new();
    let mut pen_down = false;
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else {
            pen_down = false;
            continue;
        };
        let x = (first_slot + i) as f64 * dx;
        let y = HEIGHT - (v / max).clamp(0.0, 1.0) * HEIGHT;
        out.push(if pen_down { 'L' } else { 'M' });
        out.push_str(&format!("{x:.1},{y:.1}"));
        // A lone point still shows as a dot (round line caps).
        let next_is_point = values.get(i + 1).is_some_and(Option::is_some);
        if !pen_down && !next_is_point {
            out.push_str("h0");
        }
        pen_down = true;
    }
    out
}

/// A chart of one or more series sharing a y axis; `fmt` renders values for the
/// axis label and the legend.
pub fn chart(
    title: &'static str,
    series: &[(&Series, &'static str, &'static str)],
    fmt: impl Fn(f64) -> String,
) -> Chart {
    let max = nice_ceiling(series.iter().map(|(s, _, _)| s.max()).fold(0.0, f64::max));
    let lines = series
        .iter()
        .map(|(s, class, name)| Line {
            path: path(&s.values(), s.capacity(), max),
            class,
            label: match s.last() {
                Some(v) => format!("{name} {}", fmt(v)),
                None => format!("{name} {}", crate::format::NONE),
            },
        })
        .collect();
    Chart {
        title,
        max_label: fmt(max),
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert!((nice_ceiling(0.3) - 0.5).abs() < 1e-12);
        assert!((nice_ceiling(0.0042) - 0.005).abs() < 1e-12);
    }

    #[test]
    fn paths_fill_from_the_right_with_gaps() {
        // 3 values on 5 slots: x = 120, 180, 240 (dx = 60)
        let p = path(&[Some(0.0), Some(5.0), Some(10.0)], 5, 10.0);
        assert_eq!(p, "M120.0,48.0L180.0,24.0L240.0,0.0");
        let p = path(&[Some(1.0), None, Some(1.0), Some(1.0)], 4, 2.0);
        assert_eq!(p, "M0.0,24.0h0M160.0,24.0L240.0,24.0");
        assert_eq!(path(&[None, None], 10, 1.0), "");
        assert_eq!(path(&[], 10, 1.0), "");
        // out-of-range values are clamped to the box
        assert_eq!(
            path(&[Some(-1.0), Some(99.0)], 2, 1.0),
            "M0.0,48.0L240.0,0.0"
        );
    }

    #[test]
    fn charts_share_an_axis_and_label_the_latest_value() {
        let mut a = Series::new(10);
        let mut b = Series::new(10);
        a.push(Some(3.0));
        b.push(Some(7.0));
        b.push(None);
        let c = chart("latency", &[(&a, "p50", "p50"), (&b, "p99", "p99")], |v| {
            format!("{v} ms")
        });
        assert_eq!(c.max_label, "10 ms");
        assert_eq!(c.lines[0].label, "p50 3 ms");
        assert_eq!(c.lines[1].label, "p99 —");
        assert_eq!(c.lines[0].path, "M240.0,33.6h0");
    }
}
