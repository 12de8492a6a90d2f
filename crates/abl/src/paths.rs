//! Every file a run reads or writes, resolved and compared before anything
//! is opened for writing, and the way outputs are replaced.
//!
//! Two paths are the same file when their canonical paths are equal (so
//! symlinks and `./` spellings are seen through) or, for files that exist,
//! when they share a device and inode (hard links). A file a run writes may
//! be no other path of the run, nor any file the store keeps beside a
//! checkpoint (`-wal`, `-shm`, `.lock`) or any output's partial file:
//! a collision is a usage error naming both flags.
//!
//! Outputs are never written in place. The results go to
//! `OUTPUT.abl-partial` while the run goes (`tail -f` it), which is renamed
//! over `OUTPUT` when the run ends or stops cleanly (Ctrl-C, a deadline, a
//! budget). A crash, or a failure to write, leaves the earlier `OUTPUT`
//! untouched and the partial file beside it; with a checkpoint, rerunning
//! the same command rebuilds the whole output from it.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::exit::UsageError;
use crate::settings::{InputSource, RunPlan};

/// The suffix of an output being written.
pub const PARTIAL: &str = ".abl-partial";

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A path as the file system sees it: canonical (through symlinks, even
/// one whose target does not exist yet) and, if it exists, its device and
/// inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The canonical path.
    pub path: PathBuf,
    /// Device and inode of an existing file.
    pub inode: Option<(u64, u64)>,
}

impl Resolved {
    fn same(&self, other: &Resolved) -> bool {
        self.path == other.path || (self.inode.is_some() && self.inode == other.inode)
    }
}

/// The file `a` and `b` both name, if they name one: the same canonical
/// path, or the same inode (a hard link). Paths that cannot be resolved
/// name none.
pub fn same_file(a: &Path, b: &Path) -> Option<PathBuf> {
    let (a, b) = (resolve(a).ok()?, resolve(b).ok()?);
    a.same(&b).then_some(a.path)
}

/// Resolves `path` (relative to the current directory).
pub fn resolve(path: &Path) -> std::io::Result<Resolved> {
    let mut p = std::path::absolute(path)?;
    // Follow symlinks by hand as long as the target is missing (a dangling
    // link written through creates its target).
    for _ in 0..40 {
        match std::fs::canonicalize(&p) {
            Ok(c) => {
                let inode = std::fs::metadata(&c).ok().map(|m| (m.dev(), m.ino()));
                return Ok(Resolved { path: c, inode });
            }
            Err(_) => match std::fs::read_link(&p) {
                Ok(target) => {
                    let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                    p = base.join(target);
                }
                Err(_) => break,
            },
        }
    }
    // Not there yet: its directory must be.
    let name = p
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let parent = p.parent().unwrap_or_else(|| Path::new("/"));
    let dir = std::fs::canonicalize(parent).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("its directory {} does not exist", parent.display()),
        )
    })?;
    Ok(Resolved {
        path: dir.join(name),
        inode: None,
    })
}

/// One path of the run, with the flag that named it.
#[derive(Debug, Clone)]
struct Named {
    flag: String,
    written: bool,
    at: Resolved,
}

/// The files of a run, resolved and checked.
#[derive(Debug, Clone)]
pub struct PathPlan {
    /// Where the output goes (the real file behind any symlink); `None`
    /// for stdout.
    pub output: Option<PathBuf>,
    /// Where the summary JSON goes.
    pub summary_json: Option<PathBuf>,
    /// The checkpoint's canonical path (so every way of naming it shares
    /// one lock).
    pub checkpoint: Option<PathBuf>,
}

fn usage(msg: String) -> UsageError {
    UsageError(msg)
}

impl PathPlan {
    /// Resolves every path of `plan` and refuses collisions and missing
    /// directories. Nothing is opened or created.
    pub fn check(plan: &RunPlan) -> Result<Self, UsageError> {
        let mut all: Vec<Named> = Vec::new();
        let mut add = |flag: &str, path: &Path, written: bool| -> Result<Resolved, UsageError> {
            let at = resolve(path).map_err(|e| usage(format!("{flag} {}: {e}", path.display())))?;
            all.push(Named {
                flag: flag.to_owned(),
                written,
                at: at.clone(),
            });
            Ok(at)
        };
        if let InputSource::File(p) = &plan.input {
            if !p.is_file() {
                let what = if p.exists() {
                    "not a file"
                } else {
                    "no such file"
                };
                return Err(usage(format!("INPUT {}: cannot open: {what}", p.display())));
            }
            add("INPUT", p, false)?;
        }
        for (flag, p) in [
            ("--config", plan.config_file.as_ref()),
            ("--schema", plan.request.schema.as_ref()),
        ] {
            if let Some(p) = p {
                add(flag, p, false)?;
            }
        }
        if let crate::settings::ModelChoice::Provider {
            api_key_file: Some(p),
            ..
        } = &plan.model
        {
            add("--api-key-file", p, false)?;
        }
        let output = match &plan.output {
            Some(p) => Some(written_file(&mut add, "-o/--output", p)?),
            None => None,
        };
        let summary_json = match &plan.summary_json {
            Some(p) => Some(written_file(&mut add, "--summary-json", p)?),
            None => None,
        };
        let mut checkpoint = None;
        if let Some(cp) = &plan.checkpoint {
            let at = add("--checkpoint", &cp.path, true)?;
            checkpoint = Some(at.path.clone());
            if at.inode.is_some() && at.path.is_dir() {
                return Err(usage(format!(
                    "--checkpoint {}: is a directory",
                    cp.path.display()
                )));
            }
            for suffix in ["-wal", "-shm", ".lock", "-journal"] {
                add(
                    &format!("--checkpoint's {suffix} file"),
                    &with_suffix(&at.path, suffix),
                    true,
                )?;
            }
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if (a.written || b.written) && a.at.same(&b.at) {
                    return Err(usage(format!(
                        "{} and {} are the same file ({}); abl never writes over a file it reads or writes for another purpose",
                        a.flag,
                        b.flag,
                        a.at.path.display()
                    )));
                }
            }
        }
        Ok(Self {
            output,
            summary_json,
            checkpoint,
        })
    }
}

/// Adds a file the run writes and its partial file; returns the real path.
/// A device or pipe (`/dev/null`, `/dev/stdout`) is returned as given: it
/// is written directly, never replaced, so it cannot clash with a file.
fn written_file(
    add: &mut impl FnMut(&str, &Path, bool) -> Result<Resolved, UsageError>,
    flag: &str,
    path: &Path,
) -> Result<PathBuf, UsageError> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Ok(path.to_path_buf());
    }
    let at = add(flag, path, true)?;
    if at.inode.is_some() && at.path.is_dir() {
        return Err(usage(format!("{flag} {}: is a directory", path.display())));
    }
    add(
        &format!("{flag}'s partial file"),
        &with_suffix(&at.path, PARTIAL),
        true,
    )?;
    Ok(at.path)
}

/// A file being replaced: written as `TARGET.abl-partial`, renamed over
/// `TARGET` by [`commit`](Replacement::commit). Dropped uncommitted, it
/// leaves `TARGET` as it was and the partial file for inspection.
///
/// A target that is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO)
/// is written directly: renaming a file over it would replace the device
/// itself (as root, `-o /dev/null` would turn `/dev/null` into a regular
/// file for every program on the machine).
pub struct Replacement {
    target: PathBuf,
    /// `None`: the target is written directly.
    partial: Option<PathBuf>,
    file: BufWriter<File>,
}

impl Replacement {
    /// Creates (or truncates) the partial file of `target`, or opens a
    /// target that is not a regular file for writing.
    pub fn create(target: &Path) -> Result<Self, UsageError> {
        let special = std::fs::metadata(target).is_ok_and(|m| !m.is_file() && !m.is_dir());
        let (partial, file) = if special {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(target)
                .map_err(|e| usage(format!("{}: cannot open: {e}", target.display())))?;
            (None, file)
        } else {
            let partial = with_suffix(target, PARTIAL);
            let file = File::create(&partial)
                .map_err(|e| usage(format!("{}: cannot create: {e}", partial.display())))?;
            (Some(partial), file)
        };
        Ok(Self {
            target: target.to_path_buf(),
            partial,
            file: BufWriter::with_capacity(1 << 16, file),
        })
    }

    /// The partial file being written (none when the target is written
    /// directly).
    pub fn partial(&self) -> Option<&Path> {
        self.partial.as_deref()
    }

    /// The file it replaces.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes, syncs and renames the partial file over the target (or
    /// only flushes a target written directly).
    pub fn commit(mut self) -> std::io::Result<()> {
        self.file.flush()?;
        match &self.partial {
            Some(partial) => {
                self.file.get_ref().sync_all()?;
                std::fs::rename(partial, &self.target)
            }
            None => Ok(()),
        }
    }
}

impl std::io::Write for Replacement {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_hard_links_and_spellings_are_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("in.jsonl"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("in.jsonl"), d.join("link.jsonl")).unwrap();
        std::fs::hard_link(d.join("in.jsonl"), d.join("hard.jsonl")).unwrap();
        std::os::unix::fs::symlink(d.join("missing.jsonl"), d.join("dangling.jsonl")).unwrap();
        let r = |p: &str| resolve(&d.join(p)).unwrap();
        assert!(r("in.jsonl").same(&r("link.jsonl")));
        assert!(r("in.jsonl").same(&r("hard.jsonl")));
        assert!(r("in.jsonl").same(&resolve(&d.join(".").join("in.jsonl")).unwrap()));
        assert!(r("dangling.jsonl").same(&r("missing.jsonl")));
        assert!(!r("in.jsonl").same(&r("missing.jsonl")));
        let e = resolve(&d.join("no/such/dir/out.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_target_that_is_not_a_regular_file_is_written_directly() {
        // /dev/null stays the device it is: nothing is renamed over it.
        let mut r = Replacement::create(Path::new("/dev/null")).unwrap();
        assert_eq!(r.partial(), None);
        writeln!(r, "gone").unwrap();
        r.commit().unwrap();
        let m = std::fs::metadata("/dev/null").unwrap();
        assert!(!m.is_file(), "/dev/null is still a device");
    }

    #[test]
    fn a_replacement_leaves_the_target_alone_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        let mut r = Replacement::create(&target).unwrap();
        writeln!(r, "new").unwrap();
        r.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
        let partial = r.partial().unwrap().to_path_buf();
        drop(r);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
        assert_eq!(std::fs::read_to_string(&partial).unwrap(), "new\n");
        let mut r = Replacement::create(&target).unwrap();
        writeln!(r, "newer").unwrap();
        r.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "newer\n");
        assert!(!partial.exists());
    }
}
