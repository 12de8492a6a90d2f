//! `abl report`: the HTML page of a run with cooldowns, failures and
//! replays, checked as markup and, where Chromium is installed (`.ci/run`
//! installs it), as a page a browser parses and paints.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mock, TEST_KEY, run, run_against, stderr, write_input};

/// The charts and tables every full report has.
const CHARTS: [&str; 6] = [
    "throughput",
    "in-flight",
    "rate-limits",
    "latency",
    "call-time",
    "waiting",
];
const TABLES: [&str; 4] = ["summary", "tokens", "failures", "run"];

fn run_rough(mock: &Mock, input: &Path, out: &Path, checkpoint: &Path) {
    let o = run_against(
        mock,
        input,
        out,
        &["--checkpoint", checkpoint.to_str().unwrap(), "-c", "16"],
    )
    .output()
    .unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
}

/// The number in `data-points="N"` of the chart called `name`.
fn points(html: &str, name: &str) -> usize {
    let at = html
        .find(&format!("data-chart=\"{name}\""))
        .unwrap_or_else(|| panic!("no chart {name}"));
    let chart = &html[at..html[at..].find("</svg>").map_or(html.len(), |e| at + e)];
    chart
        .match_indices("data-points=\"")
        .map(|(i, m)| {
            let rest = &chart[i + m.len()..];
            rest[..rest.find('"').unwrap()].parse::<usize>().unwrap()
        })
        .max()
        .unwrap_or(0)
}

/// Rows in the body of the table called `name`.
fn rows(html: &str, name: &str) -> usize {
    let at = html
        .find(&format!("data-table=\"{name}\""))
        .unwrap_or_else(|| panic!("no table {name}"));
    let end = at + html[at..].find("</table>").unwrap();
    html[at..end].matches("<tr><td").count()
}

/// A run of 400 items against a mock answering some calls 429 and some
/// 402, resumed over 800 so that half replay; its checkpoint and the
/// second run's output.
fn a_rough_run(dir: &Path) -> (PathBuf, PathBuf) {
    let mock = Mock::start(&[
        "--latency-ms",
        "15",
        "--jitter-ms",
        "20",
        "--fault-429",
        "0.05",
        "--hint-429",
        "retry-after:1",
        "--fault-402",
        "0.02",
        "--seed",
        "7",
    ]);
    let (first, all) = (dir.join("first.jsonl"), dir.join("all.jsonl"));
    write_input(&first, 400);
    write_input(&all, 800);
    let checkpoint = dir.join("run.sqlite");
    run_rough(&mock, &first, &dir.join("out1.jsonl"), &checkpoint);
    let out = dir.join("out2.jsonl");
    run_rough(&mock, &all, &out, &checkpoint);
    (checkpoint, out)
}

fn report(file: &Path, html: &Path) -> String {
    let o = run(&[
        "report",
        file.to_str().unwrap(),
        "-o",
        html.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::read_to_string(html).unwrap()
}

fn check_markup(html: &str, replays: bool) {
    for c in CHARTS {
        assert!(points(html, c) > 0, "chart {c} is empty");
    }
    for t in TABLES {
        assert!(rows(html, t) > 0, "table {t} is empty");
    }
    assert!(html.contains("class=\"cooldown\""), "no cooldown drawn");
    assert!(
        html.contains("insufficient balance") && html.contains("<code>r0"),
        "failures without examples"
    );
    assert_eq!(html.contains("replayed"), replays);
    // Self-contained: nothing is fetched.
    for fetch in ["<script", "src=", "href=\"http", "@import", "url("] {
        assert!(!html.contains(fetch), "{fetch} in the report");
    }
    assert!(!html.contains(&TEST_KEY[..14]), "the key leaked");
}

#[test]
fn a_report_of_a_run_with_cooldowns_failures_and_replays_has_every_chart_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let (checkpoint, out) = a_rough_run(dir.path());
    let from_checkpoint = report(&checkpoint, &dir.path().join("cp.html"));
    check_markup(&from_checkpoint, false);
    // The checkpoint names the model and prices it from the built-in list.
    assert!(
        from_checkpoint.contains("openai:gpt-4o-mini") && from_checkpoint.contains("list price"),
        "model or prices missing"
    );
    assert!(from_checkpoint.contains("Batch completed: 800 items"));
    // Both runs that wrote it, with their settings (and never the key).
    assert_eq!(rows(&from_checkpoint, "runs"), 2);
    assert!(from_checkpoint.contains("first.jsonl") && from_checkpoint.contains("all.jsonl"));
    let from_output = report(&out, &dir.path().join("out.html"));
    check_markup(&from_output, true);
    assert!(from_output.contains("400 replayed") || from_output.contains("replayed"));
    // It never writes over what it reads.
    let o = run(&["report", out.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("same file"), "{}", stderr(&o));
    if let Some(browser) = chromium() {
        in_a_browser(&browser, &dir.path().join("cp.html"));
    }
}

/// Chromium, or `None` (then the test says so, and fails when CI asked
/// for the browser check with `ABL_TEST_REQUIRE_CHROMIUM=1`).
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("ABL_TEST_REQUIRE_CHROMIUM").is_none(),
            "ABL_TEST_REQUIRE_CHROMIUM is set but no Chromium is installed"
        );
        eprintln!("no Chromium: the report was checked as markup only");
    }
    found
}

fn browser(chromium: &Path, profile: &Path) -> Command {
    let mut c = Command::new(chromium);
    c.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The page as Chromium parsed it (its DOM) and painted it (a screenshot).
fn in_a_browser(chromium: &Path, html: &Path) {
    let dir = html.parent().unwrap();
    let url = format!("file://{}", html.display());
    let dom = browser(chromium, &dir.join("profile-dom"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(dom.status.success(), "{}", stderr(&dom));
    let dom = String::from_utf8_lossy(&dom.stdout);
    // The browser kept every chart as SVG and every table: the markup
    // parsed as meant.
    for c in CHARTS {
        assert!(points(&dom, c) > 0, "chart {c} lost in the DOM");
    }
    for t in TABLES {
        assert!(rows(&dom, t) > 0, "table {t} lost in the DOM");
    }
    let shot = dir.join("report.png");
    let started = Instant::now();
    let o = browser(chromium, &dir.join("profile-shot"))
        .arg("--window-size=1100,3200")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(120));
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1100, 3200));
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    // Each series colour was painted (the throughput line, the calls in
    // flight, the 429 bars) and so was the cooldown band.
    let painted = |rgb: [u8; 3]| {
        pixels
            .iter()
            .filter(|p| {
                p.iter()
                    .zip(rgb)
                    .all(|(a, b)| (i16::from(*a) - i16::from(b)).abs() <= 6)
            })
            .count()
    };
    for (what, rgb) in [
        ("throughput line", [0x2f, 0x6f, 0xdf]),
        ("in-flight line", [0x7a, 0x4f, 0xd0]),
        ("429 bars", [0xd9, 0x47, 0x2b]),
        // The band's colour at 35 % over white.
        ("cooldown band", [0xfb, 0xe8, 0xd5]),
    ] {
        assert!(painted(rgb) > 50, "{what} not painted");
    }
    if let Some(keep) = std::env::var_os("ABL_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

#[test]
fn a_report_of_a_run_still_going_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(&["--latency-ms", "100"]);
    let input = dir.path().join("in.jsonl");
    write_input(&input, 400);
    let checkpoint = dir.path().join("live.sqlite");
    let mut child = run_against(
        &mock,
        &input,
        &dir.path().join("out.jsonl"),
        &[
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "-c",
            "2",
            "--no-progress",
        ],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // Wait for some records (the run takes about 20 s in all).
    let html = dir.path().join("live.html");
    let started = Instant::now();
    let page = loop {
        std::thread::sleep(Duration::from_millis(300));
        let o = run(&[
            "report",
            checkpoint.to_str().unwrap(),
            "-o",
            html.to_str().unwrap(),
        ]);
        if o.status.success() {
            let page = std::fs::read_to_string(&html).unwrap();
            if page.contains("data-chart=\"throughput\"") {
                break page;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no records");
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(page.contains("Still running"), "not marked live");
    assert!(
        page.contains("Batch so far:"),
        "a live run called completed"
    );
    // Its partial output file, read while the run goes: not finished either.
    let partial = dir.path().join("out.jsonl.abl-partial");
    let from_partial = report(&partial, &dir.path().join("partial.html"));
    assert!(from_partial.contains("Not finished"));
    assert!(!from_partial.contains("Batch completed"));
    assert!(
        page.contains(&format!("PID {}", child.id())),
        "the writer is not named"
    );
    // Once the writer is gone, it is no longer live.
    let again = report(&checkpoint, &html);
    assert!(!again.contains("Still running"));
}
