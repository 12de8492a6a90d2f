//! Summaries: the end of `abl run` on stderr (and `--summary-json`), and
//! `abl summary FILE`: the summary of an output file, or of a checkpoint
//! with every identity it holds and the count of each.

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

use async_batch_llm::store::{CHECKPOINT_SCHEMA, Identity, KnownIdentity};
use async_batch_llm::{Prices, RunSummary, SummaryCollector, Termination};

use crate::checkpoint::{is_sqlite, open_read_only};
use crate::exit::{self, UsageError};
use crate::paths::Replacement;
use crate::progress::{eprintln_safe, print_safe};

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// One identity of a checkpoint and the summary of its records.
struct PerIdentity {
    known: KnownIdentity,
    collector: SummaryCollector,
}

/// `provider:model`, and the versions when set.
pub fn describe(identity: &Identity) -> String {
    let mut s = format!("{}:{}", identity.provider, identity.model);
    for (what, v) in [
        ("prompt version", &identity.prompt_version),
        ("app version", &identity.app_version),
    ] {
        if !v.is_empty() {
            let _ = write!(s, ", {what} {v:?}");
        }
    }
    if !identity.parser_version.is_empty() {
        s.push_str(", with a schema");
    }
    if let Some(sys) = identity.extra.get("system") {
        let head: String = sys.chars().take(40).collect();
        let _ = write!(s, ", system {head:?}");
        if sys.chars().count() > 40 {
            s.push('…');
        }
    }
    s
}

fn checkpoint_summary(file: &Path) -> Result<SummaryCollector, UsageError> {
    let store = open_read_only(file)?;
    let mut groups: Vec<PerIdentity> = store
        .identities()
        .into_iter()
        .map(|known| PerIdentity {
            known,
            collector: SummaryCollector::default(),
        })
        .collect();
    let mut all = SummaryCollector::default();
    store
        .for_each(&mut |r| {
            all.add(&r.result);
            let found = groups
                .iter()
                .position(|g| g.known.fingerprint == r.identity_fp);
            let at = found.unwrap_or_else(|| {
                groups.push(PerIdentity {
                    known: KnownIdentity {
                        fingerprint: r.identity_fp.clone(),
                        identity: None,
                    },
                    collector: SummaryCollector::default(),
                });
                groups.len() - 1
            });
            groups[at].collector.add(&r.result);
            Ok(())
        })
        .map_err(|e| usage(e.to_string()))?;
    let made_by = store
        .manifest()
        .map(|m| format!(", made by {}", m.tool_version))
        .unwrap_or_default();
    let n = groups.len();
    print_safe(&format!(
        "Checkpoint {} holds {n} identit{}{made_by}:\n",
        file.display(),
        if n == 1 { "y" } else { "ies" }
    ));
    for (i, g) in groups.into_iter().enumerate() {
        let s = &g.collector.stats;
        let who = g.known.identity.as_ref().map_or_else(
            || {
                format!(
                    "identity {}… (written before identities were named)",
                    &g.known.fingerprint[..g.known.fingerprint.len().min(12)]
                )
            },
            describe,
        );
        print_safe(&format!(
            "  {}. {who}: {} records, {} succeeded, {} failed\n",
            i + 1,
            s.items,
            s.succeeded,
            s.failed
        ));
    }
    Ok(all)
}

fn output_summary(file: &Path) -> Result<SummaryCollector, UsageError> {
    let mut c = SummaryCollector::default();
    let tail = crate::output::read_results(file, |_, _, r| {
        c.add(&r);
        Ok(())
    })?;
    if tail == crate::output::Tail::Torn {
        return Err(usage(format!(
            "{}: the last line is incomplete; is the run still writing it?",
            file.display()
        )));
    }
    Ok(c)
}

/// Whether `file` is a JSONL checkpoint (its first line is our manifest).
pub fn is_jsonl_checkpoint(file: &Path) -> Result<bool, UsageError> {
    let f = std::fs::File::open(file)
        .map_err(|e| usage(format!("{}: cannot open: {e}", file.display())))?;
    let mut first = String::new();
    std::io::BufReader::new(f)
        .read_line(&mut first)
        .map_err(|e| usage(format!("{}:1: cannot read: {e}", file.display())))?;
    Ok(first.contains(CHECKPOINT_SCHEMA))
}

/// Writes `summary` as JSON to `path`, replacing it atomically.
pub fn write_json(path: &Path, summary: &RunSummary) -> anyhow::Result<()> {
    commit_json(Replacement::create(path)?, summary)
}

/// Writes `summary` as JSON into `out` (created when the run started) and
/// puts it in place.
pub fn commit_json(mut out: Replacement, summary: &RunSummary) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut out, summary)?;
    std::io::Write::write_all(&mut out, b"\n")?;
    let target = out.target().to_path_buf();
    out.commit()
        .map_err(|e| anyhow::anyhow!("{}: cannot write the summary: {e}", target.display()))
}

/// The end of `abl run` on stderr: the summary table (bold labels on a
/// terminal).
pub fn print_end(summary: &RunSummary, prices: Option<&Prices>) {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    eprintln_safe(summary.render_styled(prices, colour).trim_end());
}

/// Input items never started: the run stopped before reading them (an
/// input error has its own message instead).
pub fn not_started(summary: &RunSummary, total: Option<u64>, input_failed: bool) -> u64 {
    match total {
        Some(total) if !input_failed => total.saturating_sub(summary.stats.items),
        _ => 0,
    }
}

/// `abl summary FILE`.
pub fn run(file: &Path, summary_json: Option<&Path>) -> anyhow::Result<i32> {
    if let Some(same) = summary_json.and_then(|j| crate::paths::same_file(file, j)) {
        return Err(usage(format!(
            "FILE and --summary-json are the same file ({}); abl never writes over a file it reads",
            same.display()
        ))
        .into());
    }
    let c = if is_sqlite(file) || is_jsonl_checkpoint(file)? {
        checkpoint_summary(file)?
    } else {
        output_summary(file)?
    };
    let s = c.finish(Termination::completed(), Duration::ZERO);
    print_safe(&s.render(None));
    if let Some(p) = summary_json {
        write_json(p, &s)?;
    }
    Ok(if s.stats.failed > 0 {
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}
