//! Building access control at start-up: refuse to start on a broken key file (fail closed),
//! take the admin token (read once by `admin::settings`), warn when nothing protects a
//! non-loopback listener.
use std::net::IpAddr;
use std::sync::Arc;

use super::admin::AdminToken;
use super::admit::AccessControl;
use super::reload::KeyFiles;
use super::store::CounterStore;
use super::table::LabelSet;
use super::AccessMode;
use crate::cli::ServeArgs;

/// `counters`: where limits count (`shared::SharedState::counters`: this process's memory, or
/// Redis with `--redis-url`).
pub fn access_control(
    args: &ServeArgs,
    key_files: &KeyFiles,
    counters: Arc<dyn CounterStore>,
    admin: Option<AdminToken>,
) -> anyhow::Result<AccessControl> {
    let failing = key_files.failing();
    if let Some((file, error)) = failing.first() {
        if args.access_control == AccessMode::Off {
            tracing::warn!(file = %file.display(), %error, "key file cannot be loaded (access control is off)");
        } else {
            anyhow::bail!(
                "the key file `{}` cannot be loaded, so llmux does not start (access control fails closed): {error}",
                file.display()
            );
        }
    }
    // OIDC tokens on /v1 are credentials: with them on, `auto` needs one from the start.
    let mode = match args.access_control {
        AccessMode::Auto if args.access.oidc_v1 => AccessMode::On,
        mode => mode,
    };
    let access = AccessControl::new(
        mode,
        Arc::clone(key_files.table()),
        counters,
        admin,
        args.quota_decision_trace,
    );
    let snapshot = access.table().snapshot();
    if access.enabled() {
        tracing::info!(
            keys = snapshot.key_count(),
            policies = snapshot.policies.len(),
            admin_token = access.admin_token().is_some(),
            "access control on: proxied requests need a client key"
        );
    } else if !is_loopback(&args.host) {
        tracing::warn!(
            host = %args.host,
            "access control is off and llmux listens beyond loopback: anyone who reaches it spends the providers' keys (add a key file, or set --access-control on)"
        );
    }
    Ok(access)
}

/// `--key-metrics-labels`: the names given, or the default.
pub fn label_set(args: &ServeArgs) -> LabelSet {
    match &args.key_metrics_labels {
        None => LabelSet::FirstNames,
        Some(names) => LabelSet::Names(
            names
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0"));
        assert!(!is_loopback("10.1.2.3"));
    }
}
