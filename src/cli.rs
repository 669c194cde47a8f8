//! Command line: every setting is a flag and an `LLMUX_*` environment variable (the flag wins).
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "llmux", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `llmux` alone is `llmux serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible API (the default).
    Serve(ServeArgs),
    /// Load the config dir, print the routing table and every problem; exit 1 on any error.
    Check(CheckArgs),
}

impl Cli {
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Directory of provider JSON files.
    #[arg(long, env = "LLMUX_CONFIG_DIR", default_value = "./configs")]
    pub config_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory of provider JSON files.
    #[arg(long, env = "LLMUX_CONFIG_DIR", default_value = "./configs")]
    pub config_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "LLMUX_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "LLMUX_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Public URL of this instance, used in links it hands out [default: http://HOST:PORT].
    #[arg(long, env = "LLMUX_BASE_URL")]
    pub base_url: Option<String>,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `llmux=debug`).
    #[arg(long, env = "LLMUX_LOG", default_value = "info")]
    pub log: String,
    /// Worker threads [default: number of cores].
    #[arg(long, env = "LLMUX_WORKERS")]
    pub workers: Option<usize>,
    /// Largest JSON request body accepted, in bytes.
    #[arg(long, env = "LLMUX_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Time allowed to connect to an upstream, in seconds.
    #[arg(long, env = "LLMUX_CONNECT_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,
    /// Largest multipart upload (audio transcriptions and translations, image edits and
    /// variations) accepted, in bytes.
    #[arg(long, env = "LLMUX_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Total bytes of images the image-data cache holds before evicting the least recently used.
    #[arg(long, env = "LLMUX_IMAGE_CACHE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub image_cache_bytes: u64,
    /// How long an image stays in the image-data cache, in seconds.
    #[arg(long, env = "LLMUX_IMAGE_CACHE_TTL", default_value = "3600", value_parser = parse_seconds)]
    pub image_cache_ttl: Duration,
}

impl ServeArgs {
    /// The settings a test or an embedding program starts from.
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            host: "127.0.0.1".into(),
            port: 0,
            base_url: None,
            log: "info".into(),
            workers: None,
            max_body_bytes: 32 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_upload_bytes: 100 * 1024 * 1024,
            image_cache_bytes: 512 * 1024 * 1024,
            image_cache_ttl: Duration::from_secs(3600),
        }
    }
}

/// Parses a positive number of seconds (`10`, `0.5`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if seconds > 0.0 {
        Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
    } else {
        Err(format!("`{text}` must be a positive number of seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_llmux_is_serve_and_flags_parse() {
        let cli =
            Cli::try_parse_from(["llmux", "--port", "9", "--connect-timeout", "0.5"]).unwrap();
        match cli.into_command() {
            Command::Serve(args) => {
                assert_eq!(args.port, 9);
                assert_eq!(args.connect_timeout, Duration::from_millis(500));
            }
            Command::Check(_) => panic!("expected serve"),
        }
        let cli = Cli::try_parse_from(["llmux", "check", "--config-dir", "/x"]).unwrap();
        assert!(
            matches!(cli.into_command(), Command::Check(a) if a.config_dir == std::path::Path::new("/x"))
        );
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("abc").is_err());
    }
}
