//! `abl report FILE -o REPORT.html`: a run as a page a person wants to
//! look at, from its checkpoint or its output file, while it runs or after.
//!
//! [`facts`] reads the records in one pass, [`timeline`] places them on a
//! time axis, [`svg`] draws the charts, [`page`] lays out the HTML and
//! [`text`] makes words safe for it.

mod facts;
mod page;
mod svg;
mod text;
mod timeline;

use std::path::Path;
use std::time::SystemTime;

use crate::checkpoint::is_sqlite;
use crate::exit::{self, UsageError};
use crate::paths::Replacement;
use crate::progress::eprintln_safe;
use facts::Facts;

/// `abl report`.
pub fn run(file: &Path, output: &Path) -> anyhow::Result<i32> {
    if let Some(same) = crate::paths::same_file(file, output) {
        return Err(UsageError(format!(
            "FILE and --output are the same file ({}); abl never writes over a file it reads",
            same.display()
        ))
        .into());
    }
    if !file.exists() {
        return Err(UsageError(format!("{}: no such file", file.display())).into());
    }
    let facts = if is_sqlite(file) || crate::summary::is_jsonl_checkpoint(file)? {
        Facts::of_checkpoint(file)?
    } else {
        Facts::of_output(file)?
    };
    let html = page::render(&facts, SystemTime::now());
    let mut out = Replacement::create(output)?;
    std::io::Write::write_all(&mut out, html.as_bytes())?;
    out.commit()
        .map_err(|e| anyhow::anyhow!("{}: cannot write the report: {e}", output.display()))?;
    eprintln_safe(&format!(
        "abl: wrote {} ({} records{})",
        output.display(),
        facts.summary.stats.items,
        if facts.live.is_some() {
            ", the run is still going"
        } else {
            ""
        }
    ));
    Ok(exit::OK)
}
