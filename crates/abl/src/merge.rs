//! `abl merge -o OUT SHARD_OUTPUT…`: the outputs of a job's shards joined
//! into one, with the check that makes splitting safe: no id is in two
//! shards' outputs, and with `--input`, every input id is in exactly one.
//! When a check fails `OUT` is left as it was and the message names the
//! file and line.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use async_batch_llm::{SummaryCollector, Termination};

use crate::exit::{self, UsageError};
use crate::input::{Format, IdSet, Mapping, Reader, Template};
use crate::paths::Replacement;
use crate::progress::{eprintln_safe, print_safe};

/// Missing ids named in the message.
const NAMED: usize = 5;

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// How the input's records are read for their ids: as `abl run` reads
/// them (the same id field, the line number when a record has none), the
/// prompt not needed.
fn id_mapping(id_field: Option<&str>) -> Mapping {
    Mapping {
        id_field: id_field.unwrap_or("id").to_owned(),
        id_field_required: id_field.is_some(),
        prompt_field: "prompt".to_owned(),
        template: Template::parse("-").ok(),
        attach: Vec::new(),
        base_dir: None,
    }
}

/// The ids of the input, as a set, and the reader's view of it.
fn input_ids(input: &Path, id_field: Option<&str>) -> Result<IdSet, UsageError> {
    let path = input.display().to_string();
    let mut r = Reader::open(&path, Format::detect(&path), id_mapping(id_field))
        .map_err(|e| usage(e.to_string()))?;
    let mut ids = IdSet::default();
    while let Some(item) = r.next_item() {
        let item = item.map_err(|e| usage(e.to_string()))?;
        if !ids.insert(&item.id) {
            return Err(usage(format!(
                "{path}:{}: id {:?} is used twice in the input",
                r.line(),
                item.id
            )));
        }
    }
    Ok(ids)
}

/// The first input ids not in `seen`.
fn missing_ids(input: &Path, id_field: Option<&str>, seen: &IdSet) -> Vec<String> {
    let path = input.display().to_string();
    let Ok(mut r) = Reader::open(&path, Format::detect(&path), id_mapping(id_field)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Some(Ok(item)) = r.next_item() {
        if !seen.contains(&item.id) {
            out.push(item.id);
            if out.len() == NAMED {
                break;
            }
        }
    }
    out
}

/// `abl merge`.
pub fn run(
    output: &Path,
    input: Option<&Path>,
    id_field: Option<&str>,
    files: &[PathBuf],
) -> anyhow::Result<i32> {
    for f in files.iter().map(PathBuf::as_path).chain(input) {
        if crate::paths::same_file(f, output).is_some() {
            return Err(usage(format!(
                "{} is both read and the merge's output; abl never writes over a file it reads",
                f.display()
            ))
            .into());
        }
    }
    let expected = input.map(|i| input_ids(i, id_field)).transpose()?;
    let mut out = Replacement::create(output)?;
    let merged = join(&mut out, files, expected.as_ref());
    let (seen, summary) = match merged {
        Ok(done) => done,
        Err(e) => {
            if let Some(p) = out.partial() {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    };
    if let (Some(input), Some(expected)) = (input, &expected)
        && seen.len() < expected.len()
    {
        if let Some(p) = out.partial() {
            let _ = std::fs::remove_file(p);
        }
        let missing = missing_ids(input, id_field, &seen);
        return Err(usage(format!(
            "{} of the {} ids of {} are in no shard's output (e.g. {}); is a shard unfinished? {} was not written",
            expected.len() - seen.len(),
            expected.len(),
            input.display(),
            missing.join(", "),
            output.display()
        ))
        .into());
    }
    out.commit()
        .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", output.display()))?;
    let s = summary.finish(Termination::completed(), std::time::Duration::ZERO);
    eprintln_safe(&format!(
        "abl: merged {} records from {} files into {}{}",
        seen.len(),
        files.len(),
        output.display(),
        if expected.is_some() {
            ": every input id exactly once"
        } else {
            ": no id twice"
        }
    ));
    print_safe(&s.render(None));
    Ok(if s.stats.failed > 0 {
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}

/// Copies every record of `files` into `out`, checking ids.
fn join(
    out: &mut Replacement,
    files: &[PathBuf],
    expected: Option<&IdSet>,
) -> Result<(IdSet, SummaryCollector), UsageError> {
    let mut seen = IdSet::default();
    let mut summary = SummaryCollector::default();
    for file in files {
        let tail = crate::output::read_results(file, |n, line, r| {
            let place = format!("{}:{n}", file.display());
            if expected.is_some_and(|ids| !ids.contains(&r.id)) {
                return Err(usage(format!(
                    "{place}: id {:?} is not in the input; is this an output of another job?",
                    r.id
                )));
            }
            if !seen.insert(&r.id) {
                return Err(usage(format!(
                    "{place}: id {:?} is already in an earlier record; were two shards run with different --shard counts, or one output given twice?",
                    r.id
                )));
            }
            summary.add(&r);
            let newline: &[u8] = if line.ends_with('\n') { b"" } else { b"\n" };
            out.write_all(line.as_bytes())
                .and_then(|()| out.write_all(newline))
                .map_err(|e| usage(format!("{}: cannot write: {e}", out.target().display())))
        })?;
        if tail == crate::output::Tail::Torn {
            return Err(usage(format!(
                "{}: the last line is incomplete; is that shard still running?",
                file.display()
            )));
        }
    }
    Ok((seen, summary))
}
