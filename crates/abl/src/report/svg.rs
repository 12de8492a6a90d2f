//! Charts as inline SVG, drawn here so the report needs no script, no
//! library and no network: a time chart (lines over cooldown bands, bars
//! for counts) and a histogram.
//!
//! Every chart is an `<svg data-chart=NAME>` whose drawn data sits in a
//! `<g class="data">`, so a test (or a person with the inspector) finds
//! what was drawn without parsing paths.

use std::fmt::Write as _;
use std::time::Duration;

use super::text::esc;

const W: f64 = 920.0;
const H: f64 = 200.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A line through the points.
    Line,
    /// One bar per point.
    Bars,
}

/// One series of a time chart.
pub struct Line<'a> {
    /// The legend's words.
    pub label: &'a str,
    /// A CSS colour.
    pub colour: &'a str,
    /// One value per step.
    pub values: &'a [f64],
    /// Line or bars.
    pub mark: Mark,
}

/// Intervals between time labels, in seconds.
const TICKS_S: [f64; 16] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    21600.0,
];

/// The smallest of 1, 2, 5 × 10ⁿ at least `v` (1 for nothing).
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag * 1.000_001 {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A number for an axis label: `1.5k`, `20`, `0.25`.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A time offset or step as a person reads it: `500 ms`, `1.5s` for
/// fractions, else `45s`, `2m05s`.
pub fn duration_words(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) && d.subsec_millis() != 0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        async_batch_llm::human_duration(d)
    }
}

fn open(out: &mut String, name: &str, title: &str) {
    let _ = write!(
        out,
        r#"<svg data-chart="{name}" viewBox="0 0 {W} {H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title)
    );
}

/// The y axis: grid lines and labels from 0 to `max`.
fn y_axis(out: &mut String, max: f64) {
    let plot_h = H - TOP - BOTTOM;
    // `max` is 1, 2 or 5 × 10ⁿ: fifths are round too.
    for i in 0..=5 {
        let v = max * f64::from(i) / 5.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 5.0;
        let _ = write!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
}

/// A time chart over `span` in steps of `step`: the series, with the
/// cooldown windows as bands behind them.
pub fn time_chart(
    name: &str,
    title: &str,
    step: Duration,
    n: usize,
    lines: &[Line<'_>],
    bands: &[(Duration, Duration)],
) -> String {
    let mut out = String::with_capacity(8 * 1024);
    open(&mut out, name, title);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let span = step.as_secs_f64() * n.max(1) as f64;
    let x = |secs: f64| LEFT + plot_w * (secs / span).clamp(0.0, 1.0);
    let max = nice_max(
        lines
            .iter()
            .flat_map(|l| l.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let y = |v: f64| TOP + plot_h - plot_h * (v / max).clamp(0.0, 1.0);
    out.push_str(r#"<g class="bands">"#);
    for (a, b) in bands {
        let (x0, x1) = (x(a.as_secs_f64()), x(b.as_secs_f64()));
        let _ = write!(
            out,
            r#"<rect class="cooldown" x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h}"><title>cooldown {:.1} s to {:.1} s</title></rect>"#,
            (x1 - x0).max(1.0),
            a.as_secs_f64(),
            b.as_secs_f64()
        );
    }
    out.push_str("</g>");
    y_axis(&mut out, max);
    // Time labels at a round interval, at most eight.
    let tick = TICKS_S
        .iter()
        .copied()
        .find(|t| span / t <= 8.0)
        .unwrap_or(span / 8.0);
    for secs in (0..=8)
        .map(|k| tick * f64::from(k))
        .take_while(|s| *s <= span)
    {
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(secs),
            H - 10.0,
            duration_words(Duration::from_secs_f64(secs))
        );
    }
    out.push_str(r#"<g class="data">"#);
    let step_s = step.as_secs_f64();
    for l in lines {
        match l.mark {
            Mark::Line => {
                let mut d = String::new();
                for (i, v) in l.values.iter().enumerate() {
                    let cx = x(step_s * (i as f64 + 0.5));
                    let _ = write!(d, "{}{cx:.1},{:.1}", if i == 0 { "M" } else { " L" }, y(*v));
                }
                let _ = write!(
                    out,
                    r#"<path class="series" data-points="{}" fill="none" stroke="{}" stroke-width="1.8" d="{d}"><title>{}</title></path>"#,
                    l.values.len(),
                    l.colour,
                    esc(l.label)
                );
            }
            Mark::Bars => {
                let bw = (plot_w / n.max(1) as f64 * 0.8).max(1.0);
                let drawn = l.values.iter().filter(|v| **v > 0.0).count();
                let _ = write!(
                    out,
                    r#"<g class="series" data-points="{drawn}" fill="{}">"#,
                    l.colour
                );
                for (i, v) in l.values.iter().enumerate().filter(|(_, v)| **v > 0.0) {
                    let x0 = x(step_s * i as f64);
                    let _ = write!(
                        out,
                        r#"<rect x="{x0:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}"><title>{} at {:.1} s: {v}</title></rect>"#,
                        y(*v),
                        TOP + plot_h - y(*v),
                        esc(l.label),
                        step_s * i as f64
                    );
                }
                out.push_str("</g>");
            }
        }
    }
    out.push_str("</g></svg>");
    out
}

/// A histogram: one bar per bucket, labelled below.
pub fn histogram(name: &str, title: &str, colour: &str, buckets: &[(String, u64)]) -> String {
    let mut out = String::with_capacity(4 * 1024);
    open(&mut out, name, title);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max = nice_max(buckets.iter().map(|b| b.1).max().unwrap_or(0) as f64);
    y_axis(&mut out, max);
    let n = buckets.len().max(1) as f64;
    let slot = plot_w / n;
    let drawn = buckets.iter().filter(|b| b.1 > 0).count();
    let _ = write!(
        out,
        r#"<g class="data"><g class="series" data-points="{drawn}" fill="{colour}">"#
    );
    for (i, (label, count)) in buckets.iter().enumerate() {
        let h = plot_h * (*count as f64 / max).clamp(0.0, 1.0);
        let x0 = LEFT + slot * i as f64 + slot * 0.1;
        let _ = write!(
            out,
            r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>{}: {count}</title></rect>"#,
            TOP + plot_h - h,
            slot * 0.8,
            esc(label)
        );
    }
    out.push_str("</g></g>");
    for (i, (label, _)) in buckets.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT + slot * (i as f64 + 0.5),
            H - 10.0,
            esc(label)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // exact values, computed exactly
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(64.0), 100.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(nice_max(1.2e6), 2e6);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(20.0), "20");
        assert_eq!(duration_words(Duration::from_millis(500)), "500 ms");
        assert_eq!(duration_words(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_words(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn a_time_chart_draws_each_series_and_band_and_escapes_words() {
        let values = [1.0, 3.0, 2.0];
        let counts = [0.0, 4.0, 0.0];
        let svg = time_chart(
            "t",
            "a <b> & c",
            Duration::from_secs(1),
            3,
            &[
                Line {
                    label: "items/s",
                    colour: "#123",
                    values: &values,
                    mark: Mark::Line,
                },
                Line {
                    label: "429s",
                    colour: "#f00",
                    values: &counts,
                    mark: Mark::Bars,
                },
            ],
            &[(Duration::from_millis(500), Duration::from_millis(1500))],
        );
        assert!(svg.contains(r#"aria-label="a &lt;b&gt; &amp; c""#), "{svg}");
        assert!(svg.contains(r#"data-points="3""#), "{svg}");
        assert!(svg.contains(r#"data-points="1""#), "{svg}");
        assert_eq!(svg.matches("class=\"cooldown\"").count(), 1);
        assert!(svg.contains(" d=\"M"), "{svg}");
    }

    #[test]
    fn a_histogram_has_a_bar_per_bucket() {
        let svg = histogram(
            "h",
            "latency",
            "#00f",
            &[("1 ms".into(), 3), ("2 ms".into(), 0), ("5 ms".into(), 9)],
        );
        assert!(svg.contains(r#"data-points="2""#), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3);
    }
}
