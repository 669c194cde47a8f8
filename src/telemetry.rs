//! Logs: bunyan-formatted JSON lines. The writer is injectable so tests can silence or capture them.
use tracing::subscriber::set_global_default;
use tracing::Subscriber;
use tracing_bunyan_formatter::{BunyanFormattingLayer, JsonStorageLayer};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Builds the subscriber: `filter` in EnvFilter syntax, JSON lines to `sink`.
pub fn subscriber<Sink>(
    name: &str,
    filter: &str,
    sink: Sink,
) -> Result<impl Subscriber + Send + Sync, tracing_subscriber::filter::ParseError>
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter)?;
    Ok(Registry::default()
        .with(filter)
        .with(JsonStorageLayer)
        .with(BunyanFormattingLayer::new(name.to_owned(), sink)))
}

/// Installs the subscriber for the whole process. Call once.
pub fn init(subscriber: impl Subscriber + Send + Sync) -> anyhow::Result<()> {
    tracing_log::LogTracer::init()?;
    set_global_default(subscriber)?;
    Ok(())
}
