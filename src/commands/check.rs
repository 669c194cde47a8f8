//! `llmux check` with its store: the config dir as the server would load it, plus the keys of
//! the access store (SQLite under `--data-dir` when its file exists, or `--database-url`), read
//! without creating or migrating anything.
use std::io::Write;

use crate::cli::CheckArgs;
use crate::secret::ApiKey;
use crate::store::{Store, StoreLocation};

pub fn parse_secret(text: &str) -> Result<ApiKey, String> {
    Ok(ApiKey::new(text))
}

/// Prints the check to `out`; returns whether there is no error.
pub fn run(args: &CheckArgs, out: &mut impl Write) -> std::io::Result<bool> {
    let database = match StoreLocation::from_settings(
        &args.data_dir,
        args.database_url.as_ref().map(ApiKey::expose),
    ) {
        Err(error) => Some(Err(error.to_string())),
        Ok(location) => match Store::read_existing(&location) {
            // The default data dir without a store: nothing to check.
            Ok(None) if matches!(location, StoreLocation::Sqlite { .. }) => None,
            Ok(snapshot) => Some(Ok(snapshot)),
            Err(error) => Some(Err(format!(
                "cannot read the access store {}: {error}",
                location.describe()
            ))),
        },
    };
    crate::check::run_with(&args.config_dir, database, out)
}
