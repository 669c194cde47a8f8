//! Realtime metrics: sessions (active, ended by whom), frames and bytes by direction, durations.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::AtomicHistogram;

/// Session lengths, 1 second to 2 hours: voice sessions last minutes.
const SESSION_SECONDS_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// `client`, `upstream`, `idle_timeout`, `shutdown`, `error`, or `refused`: no session was
    /// opened (a bad request, an unknown model, or the upstream handshake failed).
    pub ended_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    /// `client_to_upstream` or `upstream_to_client`.
    pub direction: &'static str,
    /// `text`, `binary`, `continuation`, `ping`, `pong`, `close`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Debug, Clone)]
pub struct RealtimeMetrics {
    pub sessions: Family<SessionLabels, Counter>,
    pub active: Gauge,
    pub frames: Family<FrameLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub duration: AtomicHistogram,
}

pub const CLIENT_TO_UPSTREAM: &str = "client_to_upstream";
pub const UPSTREAM_TO_CLIENT: &str = "upstream_to_client";

impl RealtimeMetrics {
    /// Registers the realtime metrics in `registry` (the application's one).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sessions: Family::default(),
            active: Gauge::default(),
            frames: Family::default(),
            bytes: Family::default(),
            duration: AtomicHistogram::new(SESSION_SECONDS_BUCKETS),
        };
        registry.register(
            "llmux_realtime_sessions",
            "Realtime WebSocket sessions, by what ended them (refused: none was opened, for a bad request, an unknown model or a failed upstream handshake)",
            metrics.sessions.clone(),
        );
        registry.register(
            "llmux_realtime_sessions_active",
            "Realtime WebSocket sessions open now",
            metrics.active.clone(),
        );
        registry.register(
            "llmux_realtime_frames",
            "WebSocket frames relayed, by direction and kind",
            metrics.frames.clone(),
        );
        registry.register(
            "llmux_realtime_bytes",
            "WebSocket payload bytes relayed, by direction",
            metrics.bytes.clone(),
        );
        registry.register(
            "llmux_realtime_session_duration_seconds",
            "Length of realtime sessions",
            metrics.duration.clone(),
        );
        metrics
    }

    /// The counters of one direction, looked up once per session rather than per frame.
    pub fn direction(&self, direction: &'static str) -> DirectionCounters {
        let frames = |kind| {
            self.frames
                .get_or_create(&FrameLabels { direction, kind })
                .clone()
        };
        DirectionCounters {
            text: frames("text"),
            binary: frames("binary"),
            continuation: frames("continuation"),
            ping: frames("ping"),
            pong: frames("pong"),
            close: frames("close"),
            bytes: self
                .bytes
                .get_or_create(&DirectionLabels { direction })
                .clone(),
        }
    }
}

/// One direction's counters (shared atomics: incrementing touches no map).
#[derive(Debug, Clone)]
pub struct DirectionCounters {
    pub text: Counter,
    pub binary: Counter,
    pub continuation: Counter,
    pub ping: Counter,
    pub pong: Counter,
    pub close: Counter,
    pub bytes: Counter,
}
