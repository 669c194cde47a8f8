//! `llmux admin keys list|create|revoke`: the admin API's key operations straight against the
//! store (no server needed), audited as `cli`. Output is JSON, one document per command.
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::admin::types::{AdminKeyCreate, KeyCreated, KeyRead};
use crate::secret::ApiKey;
use crate::store::{Actor, Store, StoreLocation, StoreTimings, WhenUnreachable};

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Directory of the embedded SQLite store.
    #[arg(long, env = "LLMUX_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; wins over --data-dir.
    #[arg(long, env = "LLMUX_DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: Option<ApiKey>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

fn parse_secret(text: &str) -> Result<ApiKey, String> {
    Ok(ApiKey::new(text))
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Keys in the store.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Live keys, masked.
    List {
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Mints a key and prints it once.
    Create {
        name: String,
        #[arg(long)]
        owner: Option<String>,
        /// Glob patterns of exposed models (comma-separated).
        #[arg(long, value_delimiter = ',')]
        allowed_models: Option<Vec<String>>,
        /// Operation names (comma-separated): chat, embeddings, ...
        #[arg(long, value_delimiter = ',')]
        allowed_operations: Option<Vec<String>>,
        #[arg(long)]
        requests_per_minute: Option<i64>,
        #[arg(long)]
        tokens_per_day: Option<i64>,
        /// RFC 3339 time, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revokes a key by id.
    Revoke { id: String },
}

/// Runs the command; `Ok(false)` when it failed in a way already written to `out`/`err`.
pub fn run(args: AdminArgs, out: &mut impl Write, err: &mut impl Write) -> anyhow::Result<bool> {
    let location = StoreLocation::from_settings(
        &args.data_dir,
        args.database_url.as_ref().map(ApiKey::expose),
    )?;
    let store = Store::open(location, StoreTimings::default(), WhenUnreachable::Fail)?;
    let actor = Actor("cli".into());
    match args.command {
        AdminCommand::Keys(KeysCommand::List { owner }) => {
            let keys = store.block_on(move |store| async move { store.list_keys(owner).await })?;
            let keys: Vec<KeyRead> = keys.iter().map(KeyRead::from).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&keys)?)?;
            Ok(true)
        }
        AdminCommand::Keys(KeysCommand::Create {
            name,
            owner,
            allowed_models,
            allowed_operations,
            requests_per_minute,
            tokens_per_day,
            expires_at,
        }) => {
            let request = AdminKeyCreate {
                name,
                owner_id: owner,
                expires_at,
                disabled: None,
                allowed_models,
                allowed_operations,
                requests_per_minute,
                requests_per_hour: None,
                requests_per_day: None,
                tokens_per_minute: None,
                tokens_per_day,
                max_concurrent_requests: None,
                monthly_token_budget: None,
            };
            let new_key = match request.new_key() {
                Ok(new_key) => new_key,
                Err(error) => {
                    writeln!(err, "llmux admin: {error}")?;
                    return Ok(false);
                }
            };
            let (record, key) = store
                .block_on(move |store| async move { store.create_key(&actor, new_key).await })?;
            let created = KeyCreated {
                key: KeyRead::from(&record),
                api_key: key,
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&created)?)?;
            Ok(true)
        }
        AdminCommand::Keys(KeysCommand::Revoke { id }) => {
            let target = id.clone();
            let revoked = store.block_on(move |store| async move {
                store.revoke_key(&actor, target, None).await
            })?;
            if revoked {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"status": "deleted", "key_id": id})
                )?;
                Ok(true)
            } else {
                writeln!(err, "llmux admin: no live key with id `{id}`")?;
                Ok(false)
            }
        }
    }
}
