//! The report as one self-contained HTML page: inline CSS, inline SVG, no
//! script and nothing fetched, so it opens anywhere (a mail attachment, an
//! air-gapped machine) and prints as it looks.

use std::fmt::Write as _;
use std::time::SystemTime;

use async_batch_llm::format_rfc3339;

use super::facts::{Facts, Source};
use super::svg::{self, Line, Mark};
use super::text::{count, esc};

const STYLE: &str = r#"
:root { --ink:#1d2430; --muted:#5b6577; --line:#d9dee7; --band:#f6b26b; --accent:#2f6fdf; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #f4f6f9; }
main { max-width: 980px; margin: 0 auto; padding: 24px 16px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.sub { color: var(--muted); margin: 0 0 18px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px;
          margin: 0 0 16px; }
.live { background: #fff7e6; border-color: #f0c36d; }
.headline { font-size: 17px; font-weight: 600; margin: 0 0 10px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.summary td:first-child { font-weight: 600; white-space: nowrap; }
code, .msg { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.msg { color: var(--muted); word-break: break-word; }
svg { width: 100%; height: auto; display: block; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .tick { fill: var(--muted); font-size: 11px; }
svg .cooldown { fill: var(--band); opacity: .35; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; color: var(--muted); font-size: 12px; margin: 2px 0 10px; }
.key { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -2px; margin-right: 5px; }
.empty { color: var(--muted); font-style: italic; }
"#;

fn legend(out: &mut String, keys: &[(&str, &str)]) {
    out.push_str(r#"<div class="legend">"#);
    for (colour, words) in keys {
        let _ = write!(
            out,
            r#"<span><span class="key" style="background:{colour}"></span>{}</span>"#,
            esc(words)
        );
    }
    out.push_str("</div>");
}

fn time(t: SystemTime) -> String {
    format_rfc3339(t).replace('T', " ").replace('Z', " UTC")
}

/// The whole page.
pub fn render(f: &Facts, generated: SystemTime) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let name = f.path.file_name().map_or_else(
        || f.path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>abl report: {}</title><style>{STYLE}</style></head><body><main>"#,
        esc(&name)
    );
    let what = match f.source {
        Source::Checkpoint => "checkpoint",
        Source::Output => "output file",
    };
    let _ = write!(
        out,
        r#"<h1>Run report</h1><p class="sub">{what} <code>{}</code> · generated {}</p>"#,
        esc(&f.path.display().to_string()),
        time(generated)
    );
    if let Some(holder) = &f.live {
        let _ = write!(
            out,
            r#"<section class="live" id="live"><b>Still running.</b> This is a snapshot: the checkpoint is being written by {}. Run <code>abl report</code> again for a newer one.</section>"#,
            esc(holder)
        );
    } else if f.torn_tail || f.is_partial() {
        out.push_str(r#"<section class="live" id="live"><b>Not finished.</b> This output is still being written (or its run stopped before the end): the figures are those of the records so far.</section>"#);
    }
    summary(&mut out, f);
    timeline(&mut out, f);
    distributions(&mut out, f);
    tokens(&mut out, f);
    failures(&mut out, f);
    run(&mut out, f);
    out.push_str("</main></body></html>\n");
    out
}

fn summary(out: &mut String, f: &Facts) {
    let _ = write!(
        out,
        r#"<section id="summary"><h2>Summary</h2><p class="headline">{}</p><table class="summary" data-table="summary"><tbody>"#,
        esc(&if f.live.is_some() || f.torn_tail || f.is_partial() {
            f.summary
                .headline()
                .replacen("Batch completed", "Batch so far", 1)
        } else {
            f.summary.headline()
        })
    );
    for row in f.summary.table(f.single_prices()) {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="n">{}</td><td>{}</td></tr>"#,
            esc(row.label),
            esc(&row.figure),
            esc(&row.detail)
        );
    }
    out.push_str("</tbody></table></section>");
}

const THROUGHPUT: &str = "#2f6fdf";
const IN_FLIGHT: &str = "#7a4fd0";
const RATE_LIMITED: &str = "#d9472b";
const FAILED: &str = "#8a8f99";
const BAND: &str = "#f6b26b";

fn timeline(out: &mut String, f: &Facts) {
    out.push_str(r#"<section id="timeline"><h2>Over time</h2>"#);
    let Some(s) = f.timeline.series(150) else {
        out.push_str(r#"<p class="empty">These records carry no times (written by an older abl, or replayed), so there is no timeline.</p></section>"#);
        return;
    };
    let _ = write!(
        out,
        r#"<p class="sub">From {}, in steps of {}; shaded: cooldowns (items waiting for the provider's rate limit to pass).</p>"#,
        time(s.start),
        svg::duration_words(s.step)
    );
    let (throughput, flying, limited, failed) =
        (s.throughput(), s.in_flight(), s.rate_limited(), s.failed());
    let n = s.points.len();
    out.push_str("<h3>Throughput</h3>");
    legend(
        out,
        &[
            (THROUGHPUT, "items finished per second"),
            (BAND, "cooldown"),
        ],
    );
    out.push_str(&svg::time_chart(
        "throughput",
        "items finished per second",
        s.step,
        n,
        &[Line {
            label: "items/s",
            colour: THROUGHPUT,
            values: &throughput,
            mark: Mark::Line,
        }],
        &s.cooldowns,
    ));
    out.push_str("<h3>Calls in flight</h3>");
    legend(
        out,
        &[(IN_FLIGHT, "mean calls in flight"), (BAND, "cooldown")],
    );
    out.push_str(&svg::time_chart(
        "in-flight",
        "calls in flight",
        s.step,
        n,
        &[Line {
            label: "in flight",
            colour: IN_FLIGHT,
            values: &flying,
            mark: Mark::Line,
        }],
        &s.cooldowns,
    ));
    out.push_str("<h3>Rate limits and failures</h3>");
    legend(
        out,
        &[
            (RATE_LIMITED, "calls answered 429"),
            (FAILED, "items failed"),
            (BAND, "cooldown"),
        ],
    );
    out.push_str(&svg::time_chart(
        "rate-limits",
        "calls answered 429 and items failed",
        s.step,
        n,
        &[
            Line {
                label: "429s",
                colour: RATE_LIMITED,
                values: &limited,
                mark: Mark::Bars,
            },
            Line {
                label: "failed",
                colour: FAILED,
                values: &failed,
                mark: Mark::Bars,
            },
        ],
        &s.cooldowns,
    ));
    if f.timeline.unplaced > 0 {
        let _ = write!(
            out,
            r#"<p class="sub">{} records are not on the time axis (replayed from an earlier run, or without times).</p>"#,
            count(f.timeline.unplaced)
        );
    }
    out.push_str("</section>");
}

fn distributions(out: &mut String, f: &Facts) {
    out.push_str(r#"<section id="distributions"><h2>Latency and waiting</h2>"#);
    let p = &f.summary.execution;
    let w = &f.summary.admission_wait;
    let ms = |d: std::time::Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    for (name, title, colour, h, note) in [
        (
            "latency",
            "Item latency (first wait to result)",
            THROUGHPUT,
            &f.latency,
            String::new(),
        ),
        (
            "call-time",
            "Time of each call",
            IN_FLIGHT,
            &f.calls,
            format!(
                "per item: p50 {}, p95 {}, p99 {}",
                ms(p.p50),
                ms(p.p95),
                ms(p.p99)
            ),
        ),
        (
            "waiting",
            "Time items waited (cooldowns and admission)",
            BAND,
            &f.waits,
            format!("p50 {}, p95 {}, p99 {}", ms(w.p50), ms(w.p95), ms(w.p99)),
        ),
    ] {
        let _ = write!(
            out,
            "<h3>{}</h3><p class=\"sub\">{} measured{}</p>",
            esc(title),
            count(h.total()),
            if note.is_empty() {
                String::new()
            } else {
                format!("; {note}")
            }
        );
        let buckets = h.buckets();
        if buckets.is_empty() {
            out.push_str(r#"<p class="empty">Nothing measured.</p>"#);
        } else {
            out.push_str(&svg::histogram(name, title, colour, &buckets));
        }
    }
    out.push_str("</section>");
}

fn tokens(out: &mut String, f: &Facts) {
    out.push_str(r#"<section id="tokens"><h2>Tokens and cost by model and outcome</h2><table data-table="tokens"><thead><tr><th>Model</th><th>Outcome</th><th>Items</th><th>Input</th><th>Cached</th><th>Output</th><th>Reasoning</th><th>Cost</th></tr></thead><tbody>"#);
    for ((fp, outcome), g) in &f.groups {
        let model = f.models.get(fp);
        let label = model.map_or("model not named", |m| m.label.as_str());
        let cost = match model {
            Some(m) if m.identity.as_ref().is_some_and(|i| i.provider == "mock") => {
                "nothing paid (mock)".to_owned()
            }
            Some(super::facts::Model {
                prices: Some((p, as_of)),
                ..
            }) => format!(
                "${:.4} <span class=\"msg\">list price {}</span>",
                p.cost(&g.usage),
                esc(as_of)
            ),
            _ => "no list price".to_owned(),
        };
        let u = &g.usage;
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{cost}</td></tr>"#,
            esc(label),
            esc(outcome),
            count(g.items),
            count(u.input),
            count(u.cached_input),
            count(u.output),
            count(u.reasoning)
        );
    }
    out.push_str("</tbody></table></section>");
}

fn failures(out: &mut String, f: &Facts) {
    out.push_str(r#"<section id="failures"><h2>Failures by category</h2>"#);
    if f.failures.is_empty() {
        out.push_str(r#"<p class="empty">No item failed.</p></section>"#);
        return;
    }
    out.push_str(r#"<table data-table="failures"><thead><tr><th>Category</th><th>Items</th><th>Examples</th></tr></thead><tbody>"#);
    for (cat, (n, examples)) in &f.failures {
        let mut list = String::new();
        for (id, message) in examples {
            let _ = write!(
                list,
                r#"<div><code>{}</code> <span class="msg">{}</span></div>"#,
                esc(id),
                esc(message)
            );
        }
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="n">{}</td><td>{list}</td></tr>"#,
            esc(&cat.as_str().replace('_', " ")),
            count(*n)
        );
    }
    out.push_str("</tbody></table></section>");
}

fn run(out: &mut String, f: &Facts) {
    out.push_str(r#"<section id="run"><h2>The run</h2><table data-table="run"><tbody>"#);
    let mut row = |k: &str, v: String| {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    };
    if let Some((a, b)) = f.timeline.span() {
        row("First call", time(a));
        row("Last result", time(b));
    }
    if let Some(m) = &f.made_by {
        row("Checkpoint made by", m.clone());
    }
    for m in f.models.values() {
        let Some(id) = &m.identity else {
            row("Model", m.label.clone());
            continue;
        };
        row("Model", format!("{}:{}", id.provider, id.model));
        for (k, v) in [
            ("Prompt version", &id.prompt_version),
            ("App version", &id.app_version),
        ] {
            if !v.is_empty() {
                row(k, v.clone());
            }
        }
        if !id.parser_version.is_empty() {
            row("Schema", format!("fingerprint {}", id.parser_version));
        }
        for (k, v) in &id.extra {
            row(&k.replace('_', " "), v.clone());
        }
    }
    out.push_str("</tbody></table>");
    runs(out, f);
    out.push_str("</section>");
}

/// The settings of each run that wrote the checkpoint.
fn runs(out: &mut String, f: &Facts) {
    const COLUMNS: [(&str, &str); 9] = [
        ("started", "Started"),
        ("model", "Model"),
        ("concurrency", "Concurrency"),
        ("rpm", "RPM"),
        ("tpm", "TPM"),
        ("max_attempts", "Attempts"),
        ("shard", "Shard"),
        ("shared_limits", "Shared limits"),
        ("input", "Input"),
    ];
    if f.runs.is_empty() {
        if f.source == Source::Checkpoint {
            out.push_str(r#"<p class="sub">The settings of the runs are kept in SQLite checkpoints written by this version of abl; this one has none.</p>"#);
        }
        return;
    }
    out.push_str(r#"<h3>Runs</h3><table data-table="runs"><thead><tr>"#);
    for (_, title) in COLUMNS {
        let _ = write!(out, "<th>{title}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for r in &f.runs {
        out.push_str("<tr>");
        for (key, _) in COLUMNS {
            let v = match r.get(key) {
                None | Some(serde_json::Value::Null) => "–".to_owned(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            let _ = write!(out, "<td>{}</td>", esc(&v));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}
