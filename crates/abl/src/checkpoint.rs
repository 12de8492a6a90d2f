//! The run's checkpoint: its identity, opening the store (refused if it is
//! not ours, locked for this run), reading stores for summaries, and
//! `abl checkpoint import`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_batch_llm::store::{
    Checkpoint, CheckpointOptions, CheckpointStore, Durability, EncodedRecord, Identity,
    JsonlStore, SqliteStore,
};
use serde_json::Value;

use crate::exit::{self, UsageError};
use crate::settings::{CheckpointPlan, RunPlan};

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

/// Whether `path` names a SQLite checkpoint (by its extension).
pub fn is_sqlite(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("sqlite" | "sqlite3" | "db")
    )
}

/// The run's identity: what must match for a record to be reused. `schema`
/// is the text of the `--schema` file.
pub fn identity(plan: &RunPlan, schema: Option<&str>) -> Identity {
    let (provider, model) = plan
        .model_text
        .split_once(':')
        .map_or((plan.model_text.clone(), String::new()), |(p, m)| {
            (p.to_owned(), m.to_owned())
        });
    let r = &plan.request;
    let mut extra = BTreeMap::new();
    if let Some(s) = &r.system {
        extra.insert("system".to_owned(), s.clone());
    }
    if let Some(t) = r.temperature {
        extra.insert("temperature".to_owned(), t.to_string());
    }
    if let Some(m) = r.max_output_tokens {
        extra.insert("max_output_tokens".to_owned(), m.to_string());
    }
    Identity {
        provider,
        model,
        prompt_version: r.prompt_version.clone(),
        parser_version: schema
            .map(async_batch_llm::key_fingerprint)
            .unwrap_or_default(),
        app_version: r.app_version.clone(),
        extra,
    }
}

/// The settings of a run as a report shows them: what was asked and how
/// it was paced. No key, no prompt text, a Redis URL without a password.
pub fn run_settings(plan: &RunPlan) -> String {
    let e = &plan.engine;
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    let shared = plan
        .shared_limits
        .as_deref()
        .map(async_batch_llm::secret::url_without_password);
    serde_json::json!({
        "started": async_batch_llm::format_rfc3339(std::time::SystemTime::now()),
        "tool": concat!("abl ", env!("CARGO_PKG_VERSION")),
        "input": match &plan.input {
            crate::settings::InputSource::Stdin => "stdin".to_owned(),
            crate::settings::InputSource::File(p) => p.display().to_string(),
        },
        "output": plan.output.as_ref().map_or_else(|| "stdout".to_owned(), |p| p.display().to_string()),
        "model": plan.model_text,
        "concurrency": e.concurrency,
        "rpm": e.limits.rpm,
        "tpm": e.limits.tpm,
        "max_attempts": e.retry.max_attempts,
        "max_rate_limit_retries": e.retry.max_rate_limit_retries,
        "attempt_timeout_s": e.attempt_timeout.as_secs_f64(),
        "item_deadline_s": secs(e.item_deadline),
        "batch_deadline_s": secs(e.batch_deadline),
        "max_tokens": e.budget.max_tokens,
        "max_cost": e.budget.max_cost,
        "dry_run": e.dry_run,
        "shard": plan.shard.map(|s| s.to_string()),
        "shared_limits": shared,
    })
    .to_string()
}

/// Opens the checkpoint at `path` (its canonical path) for a run of
/// `identity`, locked until it is dropped.
pub fn open(
    cp: &CheckpointPlan,
    path: &Path,
    identity: &Identity,
) -> Result<Checkpoint<Value>, UsageError> {
    let store: Arc<dyn CheckpointStore> = if is_sqlite(path) {
        let durability = if cp.fsync {
            Durability::Full
        } else {
            Durability::Normal
        };
        Arc::new(
            SqliteStore::open(path, identity, durability)
                .map_err(|e| usage(format!("--checkpoint {e}")))?,
        )
    } else {
        let s = JsonlStore::open(path, identity, cp.fsync)
            .map_err(|e| usage(format!("--checkpoint {e}")))?;
        if let Some(line) = s.repaired_line() {
            crate::progress::eprintln_safe(&format!(
                "abl: {}:{line}: cut off a torn last line (a crash mid-write); that item runs again",
                path.display()
            ));
        }
        Arc::new(s)
    };
    let options = CheckpointOptions {
        resume: cp.resume,
        store_inputs: cp.store_inputs,
        ..CheckpointOptions::default()
    };
    Checkpoint::new(store, identity, options).map_err(|e| usage(e.to_string()))
}

/// A checkpoint opened to read, whatever its kind: no lock, no write.
pub fn open_read_only(path: &Path) -> Result<Box<dyn CheckpointStore>, UsageError> {
    Ok(if is_sqlite(path) {
        Box::new(SqliteStore::open_read_only(path).map_err(|e| usage(e.to_string()))?)
    } else {
        Box::new(JsonlStore::open_read_only(path).map_err(|e| usage(e.to_string()))?)
    })
}

/// `abl checkpoint import`: copies a JSONL checkpoint into SQLite, every
/// identity's records under their own identity.
pub fn import(from: &Path, to: &Path) -> anyhow::Result<i32> {
    if !from.exists() {
        return Err(usage(format!("{}: no such checkpoint", from.display())).into());
    }
    if crate::paths::same_file(from, to).is_some() {
        return Err(usage("the two checkpoints of an import must be different files").into());
    }
    let src = JsonlStore::open_read_only(from).map_err(|e| usage(e.to_string()))?;
    let identity = src.manifest().map(|m| m.identity).unwrap_or_default();
    // Each identity the source names is registered by name in the target.
    for known in src.identities() {
        if let Some(id) = known.identity.filter(|id| *id != identity) {
            drop(SqliteStore::open(to, &id, Durability::Normal).map_err(|e| usage(e.to_string()))?);
        }
    }
    let dst =
        SqliteStore::open(to, &identity, Durability::Normal).map_err(|e| usage(e.to_string()))?;
    let mut batch = Vec::with_capacity(4096);
    let mut n = 0u64;
    src.for_each(&mut |r| {
        batch.push(EncodedRecord::new(&r)?);
        n += 1;
        if batch.len() == 4096 {
            dst.write_batch(&batch)?;
            batch.clear();
        }
        Ok(())
    })
    .map_err(|e| usage(e.to_string()))?;
    dst.write_batch(&batch).map_err(|e| usage(e.to_string()))?;
    crate::progress::eprintln_safe(&format!(
        "abl: imported {n} records from {} into {}",
        from.display(),
        to.display()
    ));
    Ok(exit::OK)
}
