//! `llmux check`'s key listing: name, owner, a masked digest prefix, expiry, state and limits
//! of every key the config dir's key files declare. Never a key, never a whole digest.
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::reload::KeyFiles;
use super::table::AccessTable;
use crate::config::load::{config_files, Problem, Severity};
use crate::store::records::Snapshot;

pub const KEY_HEADER: [&str; 7] = [
    "KEY NAME", "OWNER", "SHA-256", "EXPIRES", "STATE", "LIMITS", "SOURCE",
];

/// Loads every key file of `dir` as the server would; returns one row per key (sorted by
/// source) and the key files' problems.
pub fn check_dir(dir: &Path) -> (Vec<[String; 7]>, Vec<Problem>) {
    check_dir_with(dir, None)
}

/// [`check_dir`], with the keys of a store's `database` snapshot beside the files' (as the
/// server merges them): a database key with a file key's name or digest is an error.
pub fn check_dir_with(dir: &Path, database: Option<&Snapshot>) -> (Vec<[String; 7]>, Vec<Problem>) {
    let files = KeyFiles::new(Arc::new(AccessTable::new()));
    let mut problems = Vec::new();
    for path in config_files(dir).unwrap_or_default() {
        if let Ok(text) = std::fs::read_to_string(&path) {
            problems.extend(files.file_read(&path, &text));
        }
    }
    if let Some(database) = database {
        let section = super::database::section_of(database);
        if let Err(conflicts) = files
            .table()
            .replace_source(super::database::source_id(), section)
        {
            problems.extend(conflicts.into_iter().map(|conflict| Problem {
                severity: Severity::Error,
                file: conflict.at.to_string().into(),
                json_path: super::database::DATABASE_SOURCE.into(),
                position: None,
                message: conflict.message,
            }));
        }
    }
    let snapshot = files.table().snapshot();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut keys: Vec<_> = snapshot.keys().collect();
    keys.sort_by_key(|k| (k.source.to_string(), k.name.clone()));
    let rows = keys
        .into_iter()
        .map(|key| {
            let limits = &key.limits;
            let named = [
                ("rpm", limits.requests_per_minute),
                ("rph", limits.requests_per_hour),
                ("rpd", limits.requests_per_day),
                ("tpm", limits.tokens_per_minute),
                ("tpd", limits.tokens_per_day),
                ("concurrent", limits.max_concurrent_requests),
                ("monthly_tokens", limits.monthly_token_budget),
            ];
            let limits: Vec<String> = named
                .iter()
                .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
                .collect();
            let state = if key.disabled {
                "disabled"
            } else if key.is_expired(now) {
                "expired"
            } else {
                "active"
            };
            [
                key.name.to_string(),
                key.owner.to_string(),
                key.digest.masked(),
                key.expires_at
                    .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok())
                    .and_then(|at| at.format(&Rfc3339).ok())
                    .unwrap_or_else(|| "-".into()),
                state.into(),
                if limits.is_empty() {
                    "-".into()
                } else {
                    limits.join(",")
                },
                key.source.to_string(),
            ]
        })
        .collect();
    (rows, problems)
}

/// Writes rows under [`KEY_HEADER`], columns aligned.
pub fn write_table(rows: &[[String; 7]], out: &mut impl Write) -> std::io::Result<()> {
    let mut widths = KEY_HEADER.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&KEY_HEADER.map(str::to_owned)))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}
