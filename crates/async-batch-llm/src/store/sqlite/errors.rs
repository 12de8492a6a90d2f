//! SQLite failures as the crate's [`Error`], naming the file.

use std::path::Path;

use crate::error::Error;

/// A SQLite error on the store at `path`.
pub(super) fn db(path: &Path, e: &rusqlite::Error) -> Error {
    db_message(path, &e.to_string())
}

/// A store failure at `path`, described by `message`.
pub(super) fn db_message(path: &Path, message: &str) -> Error {
    Error::format(path.display().to_string(), format!("SQLite: {message}"))
}
