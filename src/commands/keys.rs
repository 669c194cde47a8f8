//! `llmux keys new`: mints a client key, shows it once, and prints the entry to paste into a
//! key file's `llmux_access.keys` list (which holds only the key's SHA-256).
use std::io::Write;

use serde::Serialize;

use crate::access::key::{mask, mint, KeyDigest};
use crate::cli::KeysCommand;

/// The entry as it goes into the file, in this key order.
#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_id: Option<&'a str>,
    key_sha256: String,
}

pub fn run(command: &KeysCommand, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        KeysCommand::New { name, owner } => {
            let key = mint().map_err(|error| anyhow::anyhow!("no OS randomness: {error}"))?;
            let digest = KeyDigest::of(&key);
            let default_name = format!("key-{}", &digest.to_hex()[..8]);
            let name = name.as_deref().unwrap_or(&default_name);
            anyhow::ensure!(
                (1..=128).contains(&name.chars().count()),
                "--name must have 1 to 128 characters"
            );
            let entry = serde_json::to_string(&Entry {
                name,
                owner_id: owner.as_deref(),
                key_sha256: digest.to_hex(),
            })?;
            writeln!(
                out,
                "New client key (shown once: store it now; llmux keeps only its SHA-256):\n\n    {key}\n"
            )?;
            writeln!(out, "It shows as {} in listings.", mask(&key))?;
            writeln!(
                out,
                "Add this entry to the \"keys\" list of the \"llmux_access\" section of a config file:\n\n    {entry}"
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_prints_the_key_once_and_an_entry_holding_its_digest() {
        let mut out = Vec::new();
        run(
            &KeysCommand::New {
                name: Some("ci \"bot\"".into()),
                owner: Some("team-a".into()),
            },
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let key = text
            .split_whitespace()
            .find(|word| word.starts_with("llmux_") && word.len() == 38)
            .unwrap();
        assert_eq!(text.matches(key).count(), 1, "{text}");
        let entry_line = text.lines().last().unwrap().trim();
        let entry: serde_json::Value = serde_json::from_str(entry_line).unwrap();
        assert_eq!(entry["name"], "ci \"bot\"");
        assert_eq!(entry["owner_id"], "team-a");
        assert_eq!(entry["key_sha256"], KeyDigest::of(key).to_hex());
        assert!(entry_line.starts_with("{\"name\""));
    }
}
