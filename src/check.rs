//! `llmux check`: the routing table and every problem, as the server would load them.
use std::io::Write;
use std::path::Path;

use crate::access;
use crate::config::load::{load_file, process_env, scan_dir, Severity};
use crate::routing::table::RoutingTable;
use crate::store::records::Snapshot;

/// The widest a table column grows.
const MAX_COLUMN: usize = 80;

/// Prints the table and problems to `out`. Returns whether the config has no error.
pub fn run(config_dir: &Path, out: &mut impl Write) -> std::io::Result<bool> {
    run_with(config_dir, None, out)
}

/// [`run`], with the keys of an access store (`Ok(None)`: configured, but none there yet) checked
/// against the key files'; a store that cannot be read is an error.
pub fn run_with(
    config_dir: &Path,
    database: Option<Result<Option<Snapshot>, String>>,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let scan = match scan_dir(config_dir) {
        Ok(scan) => scan,
        Err(error) => {
            writeln!(
                out,
                "error: cannot read the config dir `{}`: {error}",
                config_dir.display()
            )?;
            return Ok(false);
        }
    };
    let mut ok = true;
    let mut problems = Vec::new();
    let table = RoutingTable::new();
    let file_count = scan.files.len();
    for file in &scan.files {
        let load = load_file(file, &process_env);
        ok &= load.errors().next().is_none();
        problems.extend(load.problems);
        if let Some(endpoints) = load.endpoints {
            table.replace_file(&load.file, endpoints);
        }
    }
    let rows: Vec<[String; 7]> = table
        .endpoints()
        .iter()
        .map(|e| {
            [
                e.exposed_model.to_string(),
                format!("/{}", e.path),
                e.provider.to_string(),
                e.upstream_uri.to_string(),
                format!(
                    "{}s/{}s",
                    e.request_timeout.as_secs_f64(),
                    e.health_timeout.as_secs_f64()
                ),
                e.key_variable.as_deref().unwrap_or("-").to_owned(),
                match (&e.key_variable, &e.api_key) {
                    (None, _) => "-".to_owned(),
                    (Some(_), Some(_)) => "set".to_owned(),
                    (Some(_), None) => "UNSET".to_owned(),
                },
            ]
        })
        .collect();
    let header = [
        "MODEL",
        "PATH",
        "PROVIDER",
        "UPSTREAM",
        "TIMEOUTS(req/health)",
        "KEY VARIABLE",
        "KEY",
    ];
    // Columns are as wide as their widest cell, up to MAX_COLUMN: a longer cell (a model name of
    // thousands of characters) overflows its column instead of widening every row. Padding is
    // done by hand: `format!("{:<width$}")` panics for widths past u16::MAX.
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count().min(MAX_COLUMN));
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(widths) {
            if !text.is_empty() {
                text.push_str("  ");
            }
            text.push_str(cell);
            let padding = width.saturating_sub(cell.chars().count());
            text.extend(std::iter::repeat_n(' ', padding));
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(&header.map(str::to_owned)))?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    // Access control: the keys of every `llmux_access` section (never a key or a full digest).
    let database = match database {
        Some(Err(problem)) => {
            ok = false;
            writeln!(out, "error: {problem}")?;
            None
        }
        Some(Ok(snapshot)) => snapshot,
        None => None,
    };
    let (key_rows, key_problems) = access::listing::check_dir_with(config_dir, database.as_ref());
    ok &= key_problems.iter().all(|p| p.severity != Severity::Error);
    problems.extend(key_problems);
    if !key_rows.is_empty() {
        writeln!(out)?;
        access::listing::write_table(&key_rows, out)?;
    }
    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    writeln!(out)?;
    for skipped in &scan.skipped {
        writeln!(out, "{skipped}")?;
    }
    for problem in &problems {
        writeln!(out, "{problem}")?;
    }
    writeln!(
        out,
        "{file_count} files, {} routes, {errors} errors, {} warnings",
        rows.len(),
        problems.len() - errors + scan.skipped.len()
    )?;
    Ok(ok)
}
