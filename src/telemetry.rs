//! Logs: bunyan-format JSON lines, written by a formatter tuned for the one line every request
//! writes. The writer is injectable so tests can silence or capture them.
//!
//! Hand-written rather than `tracing_bunyan_formatter::BunyanFormattingLayer` for cost alone: that
//! layer builds a `HashMap` of `serde_json::Value`s, formats the time with `time`'s RFC 3339
//! formatter and allocates several `String`s per line, which was about a quarter of llmux's
//! instructions per request (issue 16). This one writes the same record (the same keys, the same
//! values, spans' `[NAME - START]`/`[NAME - END]` lines and their fields, which it reads from
//! `tracing_bunyan_formatter`'s `JsonStorageLayer`) straight into a per-thread buffer that is reused,
//! and formats the date once per second. Differences, all still bunyan: fields keep the order they
//! were written in; `time` has microseconds; an event field named after a core key (`v name msg
//! level hostname pid time target line file`) is dropped rather than written a second time;
//! records from the `log` crate carry their own target, file and line.
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::HeaderValue;
use tracing::callsite::Callsite as _;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::set_global_default;
use tracing::{Dispatch, Event, Id, Level, Metadata, Subscriber};
use tracing_bunyan_formatter::JsonStorageLayer;
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layered, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, SpanRef};
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    // Named, so that `access_line` recognises it.
    let stack: Stack = Registry::default()
        .with(filter)
        .with(JsonStorageLayer)
        .with(BunyanLayer::new(name, sink));
    Ok(stack)
}

/// Installs the subscriber for the whole process. Call once.
pub fn init(subscriber: impl Subscriber + Send + Sync) -> anyhow::Result<()> {
    tracing_log::LogTracer::init()?;
    set_global_default(subscriber)?;
    Ok(())
}

/// Standard output as a sink of whole lines ([`subscriber`]'s `Sink`), for `llmux serve`.
///
/// Each line is one `write` of a duplicate of the stdout descriptor, under a lock so that lines
/// from several threads never interleave (as they do not through `std::io::Stdout`'s lock).
/// Not `std::io::stdout` itself: its `LineWriter` searches every line for its last newline,
/// byte by byte, before writing it (about 300 instructions per access line, issue 16), and llmux
/// writes nothing else to stdout while it serves. When the descriptor cannot be duplicated
/// (stdout closed), lines go through `std::io::stdout`.
pub struct StdoutLines(Option<std::sync::Mutex<std::fs::File>>);

impl StdoutLines {
    pub fn new() -> Self {
        use std::os::fd::AsFd as _;
        let duplicate = std::io::stdout().as_fd().try_clone_to_owned().ok();
        Self(duplicate.map(|fd| std::sync::Mutex::new(std::fs::File::from(fd))))
    }
}

impl Default for StdoutLines {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`StdoutLines`] writer: the locked descriptor, or `std::io::Stdout`'s lock.
pub enum StdoutLine<'a> {
    Descriptor(std::sync::MutexGuard<'a, std::fs::File>),
    Stdout(std::io::StdoutLock<'static>),
}

impl<'a> MakeWriter<'a> for StdoutLines {
    type Writer = StdoutLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match &self.0 {
            // A thread that panicked while writing left at most a partial line.
            Some(file) => StdoutLine::Descriptor(
                file.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
            None => StdoutLine::Stdout(std::io::stdout().lock()),
        }
    }
}

impl std::io::Write for StdoutLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Descriptor(file) => file.write(bytes),
            Self::Stdout(stdout) => stdout.write(bytes),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Descriptor(file) => file.write_all(bytes),
            Self::Stdout(stdout) => stdout.write_all(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Descriptor(file) => file.flush(),
            Self::Stdout(stdout) => stdout.flush(),
        }
    }
}

/// Formats events and spans as bunyan records, one JSON object a line, to its sink.
///
/// Not generic over the sink (it keeps it behind [`LineSink`]) so that [`access_line`] can find
/// it in whatever subscriber it sits in (`Dispatch::downcast_ref::<BunyanLayer>`).
pub struct BunyanLayer {
    sink: Box<dyn LineSink>,
    /// `{"v":0,"name":<name>,"msg":` : the constant start of every line.
    head: Box<[u8]>,
    /// `,"hostname":<hostname>,"pid":<pid>`, written after the level.
    host_and_pid: Box<[u8]>,
    /// The constant parts of the access line, rendered for the first callsite [`access_line`]
    /// is called with (there is one: `pipeline::record`).
    access_parts: OnceLock<AccessParts>,
}

/// Where a layer's lines go: one call per whole line.
trait LineSink: Send + Sync {
    fn write_line(&self, metadata: &Metadata<'_>, line: &[u8]);
}

struct MakeWriterSink<Sink>(Sink);

impl<Sink> LineSink for MakeWriterSink<Sink>
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync,
{
    fn write_line(&self, metadata: &Metadata<'_>, line: &[u8]) {
        // One write per line, so lines from several threads never interleave.
        let _ = self.0.make_writer_for(metadata).write_all(line);
    }
}

/// An access line up to its `time` value, and from after it to its fields.
#[derive(Clone)]
struct AccessParts {
    /// The address of the metadata these parts were rendered for (callsites are statics).
    metadata: usize,
    prefix: Box<[u8]>,
    middle: Box<[u8]>,
}

impl BunyanLayer {
    pub fn new<Sink>(name: &str, make_writer: Sink) -> Self
    where
        Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let mut head = br#"{"v":0,"name":"#.to_vec();
        json_string(&mut head, name);
        head.extend_from_slice(br#","msg":"#);
        let mut host_and_pid = br#","hostname":"#.to_vec();
        json_string(&mut host_and_pid, &hostname);
        host_and_pid.extend_from_slice(br#","pid":"#);
        push_number(&mut host_and_pid, std::process::id());
        Self {
            sink: Box::new(MakeWriterSink(make_writer)),
            head: head.into(),
            host_and_pid: host_and_pid.into(),
            access_parts: OnceLock::new(),
        }
    }
}

/// Bunyan's keys, which the formatter writes itself: an event's field of that name is dropped.
fn is_core_key(name: &str) -> bool {
    matches!(
        name,
        "v" | "name" | "msg" | "level" | "hostname" | "pid" | "time" | "target" | "line" | "file"
    )
}

fn bunyan_level(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 50,
        Level::WARN => 40,
        Level::INFO => 30,
        Level::DEBUG => 20,
        Level::TRACE => 10,
    }
}

/// `","target":..,"line":..,"file":..`: the core keys after the time.
fn push_after_time(line: &mut Vec<u8>, metadata: &Metadata<'_>) {
    line.extend_from_slice(br#"","target":"#);
    json_string(line, metadata.target());
    line.extend_from_slice(br#","line":"#);
    match metadata.line() {
        Some(number) => push_number(line, number),
        None => line.extend_from_slice(b"null"),
    }
    line.extend_from_slice(br#","file":"#);
    match metadata.file() {
        Some(file) => json_string(line, file),
        None => line.extend_from_slice(b"null"),
    }
}

/// What a line is written into, kept per thread so a line allocates nothing once warm.
#[derive(Default)]
struct Buffers {
    line: Vec<u8>,
    fields: Vec<u8>,
    message: String,
    scratch: String,
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    second: Option<(u64, String)>,
    /// The last reading of the system clock for an access line, and the instant read with it
    /// (see [`wall_time_at`]).
    wall_clock: Option<(Instant, Duration)>,
}

/// Buffers larger than this after a line are given back rather than kept for the next one.
const KEPT_CAPACITY: usize = 64 * 1024;

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Runs `write` with this thread's buffers, or fresh ones when they are in use (a line written
/// while writing a line, by the sink itself).
fn with_buffers(write: impl FnOnce(&mut Buffers)) {
    let mut write = Some(write);
    let _ = BUFFERS.try_with(|cell| {
        if let Ok(mut buffers) = cell.try_borrow_mut() {
            if let Some(write) = write.take() {
                write(&mut buffers);
            }
            if buffers.line.capacity() > KEPT_CAPACITY {
                buffers.line = Vec::new();
                buffers.fields = Vec::new();
            }
            if buffers.message.capacity() + buffers.scratch.capacity() > KEPT_CAPACITY {
                buffers.message = String::new();
                buffers.scratch = String::new();
            }
        }
    });
    if let Some(write) = write {
        write(&mut Buffers::default());
    }
}

impl BunyanLayer {
    /// Writes a whole record: the core keys, then `fields` (already `,"key":value` pairs).
    fn emit(&self, buffers: &mut Buffers, message: &str, metadata: &Metadata<'_>) {
        let Buffers {
            line,
            fields,
            second,
            ..
        } = buffers;
        line.clear();
        self.push_up_to_time(line, message, metadata);
        push_time(line, second);
        push_after_time(line, metadata);
        line.extend_from_slice(fields);
        line.extend_from_slice(b"}\n");
        self.sink.write_line(metadata, line);
    }

    /// `{"v":0,"name":..,"msg":..,"level":..,"hostname":..,"pid":..,"time":"`.
    fn push_up_to_time(&self, line: &mut Vec<u8>, message: &str, metadata: &Metadata<'_>) {
        line.extend_from_slice(&self.head);
        json_string(line, message);
        line.extend_from_slice(br#","level":"#);
        push_number(line, bunyan_level(metadata.level()));
        line.extend_from_slice(&self.host_and_pid);
        line.extend_from_slice(br#","time":""#);
    }

    /// The access line's constant parts for `metadata`: kept for the first callsite, rendered
    /// afresh for any other.
    fn access_parts(&self, metadata: &'static Metadata<'static>) -> Cow<'_, AccessParts> {
        let address = std::ptr::from_ref(metadata) as usize;
        let render = || {
            let mut prefix = Vec::new();
            self.push_up_to_time(&mut prefix, ACCESS_MESSAGE, metadata);
            let mut middle = Vec::new();
            push_after_time(&mut middle, metadata);
            AccessParts {
                metadata: address,
                prefix: prefix.into(),
                middle: middle.into(),
            }
        };
        let kept = self.access_parts.get_or_init(render);
        if kept.metadata == address {
            Cow::Borrowed(kept)
        } else {
            Cow::Owned(render())
        }
    }

    /// Writes the access line straight to the sink: the same bytes `on_event` writes for the
    /// event [`access_line`] would otherwise dispatch (outside any span).
    fn write_access(
        &self,
        metadata: &'static Metadata<'static>,
        now: Instant,
        write_fields: impl FnOnce(&mut LineFields),
    ) {
        let parts = self.access_parts(metadata);
        with_buffers(|buffers| {
            let mut fields = LineFields {
                text: std::mem::take(&mut buffers.line),
                scratch: std::mem::take(&mut buffers.scratch),
            };
            fields.text.clear();
            fields.text.extend_from_slice(&parts.prefix);
            let since_epoch = wall_time_at(&mut buffers.wall_clock, now);
            push_time_since_epoch(&mut fields.text, &mut buffers.second, since_epoch);
            fields.text.extend_from_slice(&parts.middle);
            write_fields(&mut fields);
            fields.text.extend_from_slice(b"}\n");
            self.sink.write_line(metadata, &fields.text);
            buffers.line = fields.text;
            buffers.scratch = fields.scratch;
        });
    }

    fn span_record<S>(&self, span: &SpanRef<'_, S>, kind: &str)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        with_buffers(|buffers| {
            buffers.message.clear();
            let _ = write!(
                buffers.message,
                "[{} - {kind}]",
                span.metadata().name().to_uppercase()
            );
            buffers.fields.clear();
            write_span_fields(&mut buffers.fields, span, &[]);
            let message = std::mem::take(&mut buffers.message);
            self.emit(buffers, &message, span.metadata());
            buffers.message = message;
        });
    }
}

impl<S> Layer<S> for BunyanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let span = context.event_span(event);
        with_buffers(|buffers| {
            buffers.fields.clear();
            buffers.message.clear();
            let mut has_message = false;
            event.record(&mut FieldWriter {
                out: &mut buffers.fields,
                message: &mut buffers.message,
                has_message: &mut has_message,
                scratch: &mut buffers.scratch,
            });
            if !has_message {
                buffers.message.push_str(metadata.target());
            }
            if let Some(span) = &span {
                let name = span.metadata().name().to_uppercase();
                buffers.message.insert_str(0, &format!("[{name} - EVENT] "));
                let event_fields: Vec<&str> =
                    event.fields().map(|field| field_name(&field)).collect();
                write_span_fields(&mut buffers.fields, span, &event_fields);
            }
            let message = std::mem::take(&mut buffers.message);
            self.emit(buffers, &message, metadata);
            buffers.message = message;
        });
    }

    fn on_new_span(
        &self,
        _attributes: &tracing::span::Attributes<'_>,
        id: &Id,
        context: Context<'_, S>,
    ) {
        if let Some(span) = context.span(id) {
            self.span_record(&span, "START");
        }
    }

    fn on_close(&self, id: Id, context: Context<'_, S>) {
        if let Some(span) = context.span(&id) {
            self.span_record(&span, "END");
        }
    }
}

/// Appends the fields `JsonStorageLayer` stored for `span` (its own and its parents'), except
/// core keys and the names in `taken`.
fn write_span_fields<S>(out: &mut Vec<u8>, span: &SpanRef<'_, S>, taken: &[&str])
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let extensions = span.extensions();
    let Some(storage) = extensions.get::<tracing_bunyan_formatter::JsonStorage>() else {
        return;
    };
    for (key, value) in storage.values() {
        if is_core_key(key) || taken.contains(key) {
            continue;
        }
        out.push(b',');
        json_string(out, key);
        out.push(b':');
        // A `Value` always serializes.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// `r#type` is logged as `type`.
fn field_name(field: &Field) -> &'static str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

/// Writes an event's fields as `,"key":value` pairs, and its message aside.
struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
    message: &'a mut String,
    has_message: &'a mut bool,
    scratch: &'a mut String,
}

impl FieldWriter<'_> {
    /// Starts a pair, or says to skip the field.
    fn key(&mut self, field: &Field) -> bool {
        let name = field_name(field);
        // `log.target`, `log.file`, ...: the `log` crate's metadata, already in the core keys.
        if is_core_key(name) || name.starts_with("log.") {
            return false;
        }
        self.out.push(b',');
        json_string(self.out, name);
        self.out.push(b':');
        true
    }
}

impl Visit for FieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            push_float(self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            push_number(self.out, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            push_number(self.out, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == PRERENDERED {
            // `LineFields` rendered them as `,"key":value` pairs already.
            self.out.extend_from_slice(value.as_bytes());
        } else if field.name() == "message" {
            self.message.push_str(value);
            *self.has_message = true;
        } else if self.key(field) {
            json_string(self.out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            *self.has_message = true;
        } else if self.key(field) {
            self.scratch.clear();
            let _ = write!(self.scratch, "{value:?}");
            json_string(self.out, self.scratch);
        }
    }
}

/// The field an event carries [`LineFields`] in. The layer writes its value as it is (the pairs
/// are already JSON); any other subscriber would show it as one string field.
pub const PRERENDERED: &str = "llmux_fields";

/// The target of the access line, the one line every request writes (level INFO).
pub const ACCESS_TARGET: &str = "llmux::access";
/// The access line's message.
const ACCESS_MESSAGE: &str = "request";

/// The subscriber [`subscriber`] builds. [`access_line`] writes straight to its layer only when
/// the default subscriber is exactly this one: any other (another layer added, another
/// formatter) gets the event through tracing.
type Stack = Layered<BunyanLayer, Layered<JsonStorageLayer, Layered<EnvFilter, Registry>>>;

/// The callsite of an access line written where this is invoked: a static event callsite of
/// target [`ACCESS_TARGET`] at INFO with the fields `message` and [`PRERENDERED`], whose `file`
/// and `line` the line carries like an event logged there.
macro_rules! access_callsite {
    () => {{
        static CALLSITE: tracing::callsite::DefaultCallsite =
            tracing::callsite::DefaultCallsite::new(&META);
        static META: tracing::Metadata<'static> = tracing::Metadata::new(
            concat!("event ", file!(), ":", line!()),
            $crate::telemetry::ACCESS_TARGET,
            tracing::Level::INFO,
            Some(file!()),
            Some(line!()),
            Some(module_path!()),
            tracing::field::FieldSet::new(
                &["message", $crate::telemetry::PRERENDERED],
                tracing::callsite::Identifier(&CALLSITE),
            ),
            tracing::metadata::Kind::EVENT,
        );
        &CALLSITE
    }};
}
pub(crate) use access_callsite;

/// Writes the access line of `callsite` (made by [`access_callsite!`]) with the fields
/// `write_fields` renders, when the filter lets it through: the same record as
/// `tracing::info!(target: "llmux::access", llmux_fields = .., "request")` logged there.
///
/// With llmux's own subscriber the line goes straight to [`BunyanLayer`]'s sink, formatted
/// there, without tracing's dispatch of an event (the registry, each layer, the field visitor:
/// about 1.9k instructions of the line's 6k, issue 16). The filter is asked as the event macros
/// ask it: the level, the callsite's cached interest, then `enabled` when the interest is
/// "sometimes". It is built once (`--log`, fixed for the process), so the cached interest holds.
/// Inside a span, or under any other subscriber, the event is dispatched through tracing.
///
/// `now` is the caller's latest reading of the monotonic clock: the line's `time` is derived
/// from it where it can be ([`wall_time_at`]).
pub fn access_line(
    callsite: &'static tracing::callsite::DefaultCallsite,
    now: Instant,
    write_fields: impl FnOnce(&mut LineFields),
) -> AccessLineWent {
    let metadata = callsite.metadata();
    let level = *metadata.level();
    if level > tracing::level_filters::STATIC_MAX_LEVEL || level > LevelFilter::current() {
        return AccessLineWent::Filtered;
    }
    let interest = callsite.interest();
    if interest.is_never() {
        return AccessLineWent::Filtered;
    }
    let mut write_fields = Some(write_fields);
    tracing::dispatcher::get_default(|dispatch| {
        if !interest.is_always() && !dispatch.enabled(metadata) {
            return AccessLineWent::Filtered;
        }
        let Some(write_fields) = write_fields.take() else {
            return AccessLineWent::Filtered;
        };
        let layer = match dispatch.is::<Stack>() {
            true => dispatch.downcast_ref::<BunyanLayer>(),
            false => None,
        };
        match layer {
            Some(layer) if dispatch.current_span().id().is_none() => {
                layer.write_access(metadata, now, write_fields);
                AccessLineWent::Direct
            }
            _ => {
                dispatch_access_event(dispatch, metadata, write_fields);
                AccessLineWent::Dispatched
            }
        }
    })
}

/// How [`access_line`] handled a line (for tests; callers need not look).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLineWent {
    /// Written straight to llmux's layer.
    Direct,
    /// Dispatched as a tracing event.
    Dispatched,
    /// The filter dropped it.
    Filtered,
}

/// The access line as a tracing event, for subscribers other than llmux's own.
fn dispatch_access_event(
    dispatch: &Dispatch,
    metadata: &'static Metadata<'static>,
    write_fields: impl FnOnce(&mut LineFields),
) {
    LineFields::with(|fields| {
        write_fields(fields);
        let fieldset = metadata.fields();
        let (Some(message_field), Some(prerendered_field)) =
            (fieldset.field("message"), fieldset.field(PRERENDERED))
        else {
            return;
        };
        let message = tracing::field::display(ACCESS_MESSAGE);
        let prerendered = fields.as_str();
        let values: [(&Field, Option<&dyn tracing::Value>); 2] = [
            (&message_field, Some(&message)),
            (&prerendered_field, Some(&prerendered)),
        ];
        dispatch.event(&Event::new(metadata, &fieldset.value_set(&values)));
    });
}

/// An event's fields rendered ahead as `,"key":value` pairs, for the one line every request
/// writes ([`access_line`]): they skip tracing's per-field visitor (a dynamic call, a key check
/// and a key escape per field) and come out as the same record the fields logged one by one
/// would make: values formatted the same way, keys in the order written. Keys are the caller's
/// literals: plain names, never a bunyan core key. Like tracing, a `None` leaves its key out.
pub struct LineFields {
    /// Only ever appended `str`s to: always UTF-8.
    text: Vec<u8>,
    scratch: String,
}

thread_local! {
    static LINE_FIELDS: RefCell<LineFields> = const {
        RefCell::new(LineFields { text: Vec::new(), scratch: String::new() })
    };
}

/// Pairs rendered once by [`LineFields`] and written again as they are ([`LineFields::pairs`]),
/// for values that repeat from line to line (an endpoint's names).
#[derive(Debug)]
pub struct RenderedPairs(Box<[u8]>);

impl RenderedPairs {
    pub fn new(write: impl FnOnce(&mut LineFields)) -> Self {
        let mut fields = LineFields::new();
        write(&mut fields);
        Self(fields.text.into_boxed_slice())
    }
}

impl LineFields {
    /// Pairs rendered ahead: the same text as the calls that rendered them, in one copy.
    #[inline]
    pub fn pairs(&mut self, pairs: &RenderedPairs) -> &mut Self {
        self.text.extend_from_slice(&pairs.0);
        self
    }

    /// Runs `write` with this thread's reused fields, emptied (fresh ones when they are in use).
    pub fn with(write: impl FnOnce(&mut LineFields)) {
        let mut write = Some(write);
        let _ = LINE_FIELDS.try_with(|cell| {
            if let Ok(mut fields) = cell.try_borrow_mut() {
                fields.text.clear();
                if let Some(write) = write.take() {
                    write(&mut fields);
                }
                if fields.text.capacity() + fields.scratch.capacity() > KEPT_CAPACITY {
                    *fields = LineFields::new();
                }
            }
        });
        if let Some(write) = write {
            write(&mut LineFields::new());
        }
    }

    fn new() -> Self {
        Self {
            text: Vec::new(),
            scratch: String::new(),
        }
    }

    /// The pairs written so far: the value of the [`PRERENDERED`] field.
    pub fn as_str(&self) -> &str {
        // Never fails: only `str`s are appended.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    // The writers are `#[inline(always)]`: called with literal keys, the key's copies become
    // moves of known length instead of a `memcpy` call each (issue 16; out of line, as the
    // inliner left some, a key cost about 30 instructions more).
    #[inline(always)]
    fn key(&mut self, key: &'static str) {
        debug_assert!(!is_core_key(key) && !needs_escape(key.as_bytes()), "{key}");
        /// Keys up to this long are put together as `,"key":` first and copied once: with a
        /// literal key that is one copy of known length, where three copies checked the
        /// buffer's room three times (issue 16).
        const SHORT: usize = 28;
        let key = key.as_bytes();
        if key.len() <= SHORT {
            let mut pair = [0u8; SHORT + 4];
            pair[..2].copy_from_slice(b",\"");
            pair[2..2 + key.len()].copy_from_slice(key);
            pair[2 + key.len()..4 + key.len()].copy_from_slice(b"\":");
            self.text.extend_from_slice(&pair[..4 + key.len()]);
        } else {
            self.text.extend_from_slice(b",\"");
            self.text.extend_from_slice(key);
            self.text.extend_from_slice(b"\":");
        }
    }

    #[inline(always)]
    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.key(key);
        json_string(&mut self.text, value);
        self
    }

    #[inline(always)]
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(key, value);
        }
        self
    }

    /// A string llmux wrote in its source (a method, a route, an outcome's name): nothing in it
    /// needs escaping, so it is copied without the check (about 30 instructions a value,
    /// issue 16). Debug builds check it.
    #[inline(always)]
    pub fn literal(&mut self, key: &'static str, value: &'static str) -> &mut Self {
        debug_assert!(!needs_escape(value.as_bytes()), "{value}");
        self.key(key);
        self.text.reserve(value.len() + 2);
        self.text.push(b'"');
        self.text.extend_from_slice(value.as_bytes());
        self.text.push(b'"');
        self
    }

    /// A header's value as `HeaderValue::to_str` reads it, like `field = value.to_str().unwrap_or("")`
    /// (empty when it is not all printable ASCII). One search says whether the bytes are both
    /// printable ASCII and free of what JSON escapes, and those (llmux's own request ids, and
    /// most of the clients') are copied as they are: `to_str`'s byte-by-byte check and then the
    /// escape check cost about 10 instructions per byte (issue 16).
    #[inline(always)]
    pub fn header_value(&mut self, key: &'static str, value: &HeaderValue) -> &mut Self {
        let bytes = value.as_bytes();
        if crate::swar::json_special_or_not_printable(bytes, 0).is_some() {
            return self.str(key, value.to_str().unwrap_or(""));
        }
        self.key(key);
        self.text.reserve(bytes.len() + 2);
        self.text.push(b'"');
        self.text.extend_from_slice(bytes);
        self.text.push(b'"');
        self
    }

    /// `value`'s `Display` text as a string, like `field = %value`.
    pub fn display(&mut self, key: &'static str, value: impl std::fmt::Display) -> &mut Self {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = write!(scratch, "{value}");
        self.str(key, &scratch);
        self.scratch = scratch;
        self
    }

    /// A client address as its `Display` text (`127.0.0.1:5000`, `[::1]:5000`). An IPv4 one is
    /// written digit by digit: `Display` goes through the formatter twice (address, then port)
    /// and cost about 1.3k instructions per line (issue 16).
    #[inline(always)]
    pub fn socket_addr(&mut self, key: &'static str, address: std::net::SocketAddr) -> &mut Self {
        let std::net::SocketAddr::V4(v4) = address else {
            return self.display(key, address);
        };
        self.key(key);
        self.text.push(b'"');
        for (i, octet) in v4.ip().octets().into_iter().enumerate() {
            if i > 0 {
                self.text.push(b'.');
            }
            push_octet(&mut self.text, octet);
        }
        self.text.push(b':');
        push_number(&mut self.text, v4.port());
        self.text.push(b'"');
        self
    }

    #[inline(always)]
    pub fn number(&mut self, key: &'static str, value: impl itoa::Integer) -> &mut Self {
        self.key(key);
        push_number(&mut self.text, value);
        self
    }

    #[inline(always)]
    pub fn opt_number<N: itoa::Integer>(
        &mut self,
        key: &'static str,
        value: Option<N>,
    ) -> &mut Self {
        if let Some(value) = value {
            self.number(key, value);
        }
        self
    }

    /// As the layer writes an `f64` field: ryu's shortest form, `null` for NaN and infinities.
    #[inline(always)]
    pub fn float(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.key(key);
        push_float(&mut self.text, value);
        self
    }

    #[inline(always)]
    pub fn opt_float(&mut self, key: &'static str, value: Option<f64>) -> &mut Self {
        if let Some(value) = value {
            self.float(key, value);
        }
        self
    }

    #[inline(always)]
    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.key(key);
        self.text
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    #[inline(always)]
    pub fn opt_bool(&mut self, key: &'static str, value: Option<bool>) -> &mut Self {
        if let Some(value) = value {
            self.bool(key, value);
        }
        self
    }
}

/// Appends an `f64` as the layer writes one: ryu's shortest form, `null` (like serde_json) for
/// NaN and infinities, which JSON has not.
///
/// Through zmij below 1e16: it writes the same text as ryu (the shortest digits that read back
/// as the same `f64`, in the same notation; zmij's own tests compare the two) in about half
/// the instructions (issue 16: three floats were 1k of the access line). From 1e16 on both
/// switch to an exponent, which zmij writes `1e+16` and ryu `1e16`: ryu there.
fn push_float(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        out.extend_from_slice(b"null");
    } else if value.abs() < 1e16 {
        out.extend_from_slice(zmij::Buffer::new().format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
    }
}

/// Appends `text` as a JSON string: quoted, and escaped by serde_json when it has to be.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        // Serializing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Whether `bytes` holds what a JSON string must escape: `"`, `\\` or a control character.
/// Checked eight bytes at a time (`swar`) to skip serde_json's byte-by-byte escaping when
/// nothing needs it (most values).
fn needs_escape(bytes: &[u8]) -> bool {
    crate::swar::json_special(bytes, 0).is_some()
}

/// A byte's decimal digits, as `Display` writes them: without itoa's buffer and the copy of
/// its 1 to 3 digits (a `memcpy` call each).
fn push_octet(out: &mut Vec<u8>, octet: u8) {
    if octet >= 100 {
        out.push(b'0' + octet / 100);
    }
    if octet >= 10 {
        out.push(b'0' + octet / 10 % 10);
    }
    out.push(b'0' + octet % 10);
}

#[inline]
fn push_number(out: &mut Vec<u8>, number: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
}

/// Appends the current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339). The part up to the
/// second is formatted once per second and kept in `second`.
fn push_time(out: &mut Vec<u8>, second: &mut Option<(u64, String)>) {
    push_time_since_epoch(out, second, system_time_since_epoch());
}

fn system_time_since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The wall-clock time of `now`, from this thread's last reading of the system clock (`base`: an
/// instant and the system time read with it) when that is less than a second before `now`: the
/// access line is written when the record has just read the monotonic clock, and reading the
/// system clock as well cost about 250 instructions per line (issue 16). Both clocks run at the
/// same rate (NTP slews them alike; only the system clock steps), so the time is the system
/// clock's to within the reading's own microseconds, and a step shows within a second.
fn wall_time_at(base: &mut Option<(Instant, Duration)>, now: Instant) -> Duration {
    if let Some((instant, since_epoch)) = *base {
        if let Some(elapsed) = now.checked_duration_since(instant) {
            if elapsed < Duration::from_secs(1) {
                return since_epoch + elapsed;
            }
        }
    }
    let since_epoch = system_time_since_epoch();
    // The instant read right after, so that later lines are not early by what lies between.
    *base = Some((Instant::now(), since_epoch));
    since_epoch
}

/// [`push_time`] of a time already read.
fn push_time_since_epoch(
    out: &mut Vec<u8>,
    second: &mut Option<(u64, String)>,
    since_epoch: Duration,
) {
    let seconds = since_epoch.as_secs();
    let formatted = match second {
        Some((cached, formatted)) if *cached == seconds => formatted,
        _ => {
            let date = i64::try_from(seconds)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let mut text = String::with_capacity(19);
            let _ = write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                date.year(),
                u8::from(date.month()),
                date.day(),
                date.hour(),
                date.minute(),
                date.second()
            );
            &mut second.insert((seconds, text)).1
        }
    };
    out.extend_from_slice(formatted.as_bytes());
    // `.ffffffZ` as one fixed-size copy: the digits through itoa and the zeros before them
    // were two copies of variable length.
    let micros = since_epoch.subsec_micros();
    let digit = |place: u32| b'0' + (micros / place % 10) as u8;
    out.extend_from_slice(&[
        b'.',
        digit(100_000),
        digit(10_000),
        digit(1_000),
        digit(100),
        digit(10),
        digit(1),
        b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::Value;
    use tracing_bunyan_formatter::BunyanFormattingLayer;

    use super::*;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// The keys of a JSON object line, in order, failing on a key written twice (serde_json's
    /// `Value` would silently keep the last one).
    fn keys_once(line: &str) -> Vec<String> {
        struct Keys(Vec<String>);
        impl<'de> serde::Deserialize<'de> for Keys {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = Keys;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Keys, A::Error> {
                        let mut keys: Vec<String> = Vec::new();
                        while let Some((key, _)) =
                            map.next_entry::<String, serde::de::IgnoredAny>()?
                        {
                            if keys.contains(&key) {
                                return Err(serde::de::Error::custom(format!(
                                    "duplicate key {key}"
                                )));
                            }
                            keys.push(key);
                        }
                        Ok(Keys(keys))
                    }
                }
                deserializer.deserialize_map(Visitor)
            }
        }
        serde_json::from_str::<Keys>(line)
            .unwrap_or_else(|error| panic!("{error} in {line}"))
            .0
    }

    fn ours(filter: &str, log: impl FnOnce()) -> Vec<String> {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = subscriber("llmux", filter, move || sink.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, log);
        capture.lines()
    }

    fn theirs(log: impl FnOnce()) -> Vec<String> {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber =
            Registry::default()
                .with(JsonStorageLayer)
                .with(BunyanFormattingLayer::new("llmux".to_owned(), move || {
                    sink.clone()
                }));
        tracing::subscriber::with_default(subscriber, log);
        capture.lines()
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, today.
    fn assert_rfc3339_utc(time: &str) {
        let bytes = time.as_bytes();
        let shape_ok = bytes.len() >= 20
            && bytes.iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                10 => *b == b'T',
                13 | 16 => *b == b':',
                19 if bytes.len() > 20 => *b == b'.',
                _ if i == bytes.len() - 1 => *b == b'Z',
                _ => b.is_ascii_digit(),
            });
        assert!(shape_ok, "not RFC 3339 UTC: {time}");
        // The line was written within the last seconds: its date is today's or, just after
        // midnight, yesterday's.
        let now = time::OffsetDateTime::now_utc();
        let dates: Vec<String> = [now, now - time::Duration::seconds(60)]
            .iter()
            .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
            .collect();
        assert!(dates.iter().any(|d| *d == time[..10]), "{time}");
    }

    fn object(line: &str) -> BTreeMap<String, Value> {
        keys_once(line);
        serde_json::from_str(line).unwrap()
    }

    /// An access line like `proxy::log` writes, with every kind of value.
    fn access_line() {
        let client: Option<String> = Some("127.0.0.1:5000".to_owned());
        let none: Option<f64> = None;
        tracing::info!(
            target: "llmux::access",
            request_id = "req-1",
            method = "POST",
            path = "/v1/chat/completions",
            model = "gpt \"quoted\"\n\u{1}é",
            status = 200u16,
            duration_ms = 1.25f64,
            ttfb_ms = Some(0.5f64),
            ttft_ms = none,
            prompt_tokens = Some(12u64),
            attempts = 1u32,
            delta = -3i64,
            stream = false,
            not_a_number = f64::NAN,
            client = client.as_deref(),
            error = %"upstream \"down\"",
            debug = ?("tuple", 1),
            "request"
        );
    }

    #[test]
    fn lines_have_the_same_keys_and_values_as_tracing_bunyan_formatter() {
        let new = ours("info", access_line);
        let old = theirs(access_line);
        assert_eq!((new.len(), old.len()), (1, 1), "{new:?} {old:?}");
        let (mut new, mut old) = (object(&new[0]), object(&old[0]));
        for line in [&new, &old] {
            assert_rfc3339_utc(line["time"].as_str().unwrap());
        }
        new.remove("time");
        old.remove("time");
        // The old layer wrote `line` as a number and `file` as a string too; both agree apart
        // from the line number, which is the same callsite.
        assert_eq!(new, old);
    }

    #[test]
    fn prerendered_fields_make_the_line_the_fields_logged_one_by_one_make() {
        let client: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let one_by_one = || {
            tracing::info!(
                target: "llmux::access",
                request_id = "req-1",
                model = "gpt \"quoted\"\n\u{1}é",
                status = 200u16,
                duration_ms = 1.25f64,
                whole_ms = 2.0f64,
                ttfb_ms = Some(0.5f64),
                prompt_tokens = Some(12u64),
                delta = -3i64,
                stream = false,
                estimated = Some(true),
                not_a_number = f64::NAN,
                client = %client,
                key_name = Some("alice"),
                "request"
            );
        };
        let prerendered = || {
            LineFields::with(|fields| {
                fields
                    .str("request_id", "req-1")
                    .str("model", "gpt \"quoted\"\n\u{1}é")
                    .number("status", 200u16)
                    .float("duration_ms", 1.25)
                    .float("whole_ms", 2.0)
                    .opt_float("ttfb_ms", Some(0.5))
                    .opt_float("ttft_ms", None)
                    .opt_number("prompt_tokens", Some(12u64))
                    .opt_number::<u64>("completion_tokens", None)
                    .number("delta", -3i64)
                    .bool("stream", false)
                    .opt_bool("estimated", Some(true))
                    .float("not_a_number", f64::NAN)
                    .socket_addr("client", client)
                    .opt_str("key_name", Some("alice"))
                    .opt_str("key_owner", None);
                tracing::info!(
                    target: "llmux::access",
                    llmux_fields = fields.as_str(),
                    "request"
                );
            });
        };
        let (new, mine, old) = (
            ours("info", prerendered),
            ours("info", one_by_one),
            theirs(one_by_one),
        );
        assert_eq!((new.len(), mine.len(), old.len()), (1, 1, 1));
        assert_eq!(
            keys_once(&new[0]),
            keys_once(&mine[0]),
            "the same keys in the same order"
        );
        let (mut new, mut old) = (object(&new[0]), object(&old[0]));
        for key in ["time", "line"] {
            new.remove(key);
            old.remove(key);
        }
        assert_eq!(new, old);
        assert_eq!(new["whole_ms"].to_string(), "2.0");
    }

    #[test]
    fn client_addresses_are_written_as_they_display() {
        for text in [
            "127.0.0.1:5000",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.99.100.9:80",
            "1.20.199.250:1",
            "[::1]:443",
        ] {
            let address: std::net::SocketAddr = text.parse().unwrap();
            let mut fields = LineFields::new();
            fields.socket_addr("client", address);
            assert_eq!(fields.as_str(), format!(",\"client\":\"{address}\""));
        }
    }

    #[test]
    fn header_values_are_written_as_their_to_str_text() {
        let mut values: Vec<HeaderValue> = [
            "req_9f9dcc56c6899ef0547cf9a6d7abcb99",
            "",
            "a",
            "abc-123",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "tilde~and{braces}",
            "twenty-three-bytes-long",
        ]
        .into_iter()
        .map(HeaderValue::from_static)
        .collect();
        // Bytes `to_str` refuses (obs-text; a header holds no DEL) or JSON escapes, at every
        // place of one and two words.
        for byte in [b'\t', b'"', b'\\', 0x80, 0xe9, 0xff] {
            for len in [1, 7, 8, 9, 16, 17] {
                for place in 0..len {
                    let mut bytes = vec![b'x'; len];
                    bytes[place] = byte;
                    values.push(HeaderValue::from_bytes(&bytes).unwrap());
                }
            }
        }
        for value in values {
            let mut fields = LineFields::new();
            fields.header_value("request_id", &value);
            let text = value.to_str().unwrap_or("");
            let expected = format!(",\"request_id\":{}", serde_json::to_string(text).unwrap());
            assert_eq!(fields.as_str(), expected, "{value:?}");
        }
    }

    #[test]
    fn keys_of_any_length_are_written_whole() {
        let mut fields = LineFields::new();
        fields
            .number("a", 1u8)
            .number("twenty_eight_bytes_long_key_", 2u8)
            .number("twenty_nine_bytes_long_key_xy", 3u8)
            .number(
                "a_key_much_longer_than_the_short_ones_put_together_first",
                4u8,
            );
        assert_eq!(
            fields.as_str(),
            concat!(
                r#","a":1,"twenty_eight_bytes_long_key_":2,"twenty_nine_bytes_long_key_xy":3"#,
                r#","a_key_much_longer_than_the_short_ones_put_together_first":4"#
            )
        );
    }

    #[test]
    fn literals_are_written_like_strings() {
        let mut literal = LineFields::new();
        literal
            .literal("path", "v1/chat/completions")
            .literal("outcome", "ok");
        let mut checked = LineFields::new();
        checked
            .str("path", "v1/chat/completions")
            .str("outcome", "ok");
        assert_eq!(literal.as_str(), checked.as_str());
    }

    #[test]
    fn prerendered_fields_are_written_only_when_the_filter_lets_the_line_through() {
        let lines = ours("warn", || {
            LineFields::with(|fields| {
                fields.number("status", 200u16);
                tracing::info!(target: "llmux::access", llmux_fields = fields.as_str(), "request");
            });
        });
        assert!(lines.is_empty(), "{lines:?}");
    }

    /// The line with its `time` value taken out.
    fn without_time(line: &str) -> String {
        let start = line.find(r#""time":""#).unwrap() + 8;
        let end = start + line[start..].find('"').unwrap();
        format!("{}{}", &line[..start], &line[end..])
    }

    fn some_access_fields(fields: &mut LineFields) {
        let client: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        fields
            .str("request_id", "req-1")
            .str("model", "gpt \"quoted\"\n\u{1}é")
            .number("status", 200u16)
            .float("duration_ms", 1.25)
            .opt_float("ttft_ms", None)
            .opt_number("prompt_tokens", Some(12u64))
            .bool("stream", false)
            .socket_addr("client", client)
            .opt_str("key_name", Some("alice"));
    }

    /// Writes the access line of one callsite twice: straight (`access_line`) and dispatched
    /// through tracing to the same subscriber, returning how the first went and both lines.
    fn direct_and_dispatched(
        filter: &str,
        around: impl Fn(&dyn Fn()),
    ) -> (Vec<AccessLineWent>, Vec<String>) {
        let callsite = access_callsite!();
        let went = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&went);
        let lines = ours(filter, || {
            around(&|| {
                let how = super::access_line(callsite, Instant::now(), some_access_fields);
                record.lock().unwrap().push(how);
                tracing::dispatcher::get_default(|dispatch| {
                    dispatch_access_event(dispatch, callsite.metadata(), some_access_fields)
                });
            })
        });
        let went = went.lock().unwrap().clone();
        (went, lines)
    }

    #[test]
    fn the_access_line_written_straight_is_the_line_the_layer_writes_for_its_event() {
        let (went, lines) = direct_and_dispatched("info", |log| log());
        assert_eq!(went, [AccessLineWent::Direct]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(without_time(&lines[0]), without_time(&lines[1]));
        let line = object(&lines[0]);
        assert_rfc3339_utc(line["time"].as_str().unwrap());
        assert_eq!(line["msg"], "request");
        assert_eq!(line["level"], 30);
        assert_eq!(line["target"], "llmux::access");
        assert_eq!(line["file"], "src/telemetry.rs");
        assert_eq!(line["model"], "gpt \"quoted\"\n\u{1}é");
        assert_eq!(line["client"], "127.0.0.1:5000");
        assert!(!line.contains_key(PRERENDERED), "{line:?}");
    }

    #[test]
    fn the_access_line_has_the_keys_and_values_of_its_fields_logged_one_by_one() {
        let callsite = access_callsite!();
        let client: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let direct = ours("info", || {
            super::access_line(callsite, Instant::now(), some_access_fields);
        });
        let one_by_one = || {
            tracing::info!(
                target: "llmux::access",
                request_id = "req-1",
                model = "gpt \"quoted\"\n\u{1}é",
                status = 200u16,
                duration_ms = 1.25f64,
                prompt_tokens = Some(12u64),
                stream = false,
                client = %client,
                key_name = Some("alice"),
                "request"
            );
        };
        let (mine, old) = (ours("info", one_by_one), theirs(one_by_one));
        assert_eq!(keys_once(&direct[0]), keys_once(&mine[0]));
        let (mut direct, mut old) = (object(&direct[0]), object(&old[0]));
        for key in ["time", "line", "file"] {
            direct.remove(key);
            old.remove(key);
        }
        assert_eq!(direct, old);
    }

    /// An RFC 3339 `time` value as the time since the epoch.
    fn since_epoch(time: &str) -> Duration {
        let parsed =
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .unwrap();
        Duration::from_nanos(u64::try_from(parsed.unix_timestamp_nanos()).unwrap())
    }

    #[test]
    fn access_lines_carry_the_system_clocks_time_when_written() {
        let callsite = access_callsite!();
        for _ in 0..3 {
            let before = system_time_since_epoch();
            let lines = ours("info", || {
                for _ in 0..3 {
                    super::access_line(callsite, Instant::now(), some_access_fields);
                }
            });
            let after = system_time_since_epoch();
            for line in &lines {
                let time = since_epoch(object(line)["time"].as_str().unwrap());
                // `time` is cut to microseconds.
                let earliest = before - Duration::from_micros(1);
                assert!(
                    earliest <= time && time <= after,
                    "{before:?} {time:?} {after:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(400));
        }
    }

    #[test]
    fn the_wall_clock_is_read_again_after_a_second() {
        let now = Instant::now();
        let since_epoch = Duration::from_secs(1_000_000);
        let mut base = Some((now - Duration::from_millis(500), since_epoch));
        assert_eq!(
            wall_time_at(&mut base, now),
            since_epoch + Duration::from_millis(500)
        );
        let mut base = Some((now - Duration::from_millis(1_000), since_epoch));
        let before = system_time_since_epoch();
        let read = wall_time_at(&mut base, now);
        assert!(before <= read && read <= system_time_since_epoch());
        assert_eq!(base.map(|(_, since_epoch)| since_epoch), Some(read));
        // An instant before the base (another thread's, say) reads the clock too.
        let mut base = Some((now + Duration::from_millis(10), since_epoch));
        assert_ne!(wall_time_at(&mut base, now), since_epoch);
    }

    #[test]
    fn access_lines_follow_the_filter() {
        for (filter, written) in [
            ("info", true),
            ("debug", true),
            ("llmux=info", true),
            ("warn,llmux::access=info", true),
            ("warn", false),
            ("info,llmux::access=off", false),
            ("info,llmux::access=warn", false),
            ("off", false),
        ] {
            let callsite = access_callsite!();
            let mut went = None;
            let lines = ours(filter, || {
                went = Some(super::access_line(
                    callsite,
                    Instant::now(),
                    some_access_fields,
                ))
            });
            let expected = match written {
                true => AccessLineWent::Direct,
                false => AccessLineWent::Filtered,
            };
            assert_eq!(went, Some(expected), "{filter}");
            assert_eq!(lines.len(), usize::from(written), "{filter}: {lines:?}");
        }
    }

    #[test]
    fn an_access_line_inside_a_span_carries_its_fields_like_any_event() {
        let (went, lines) = direct_and_dispatched("info", |log| {
            let span = tracing::info_span!("drain", file_name = "a.json");
            let _entered = span.enter();
            log();
        });
        assert_eq!(went, [AccessLineWent::Dispatched]);
        assert_eq!(lines.len(), 4, "start, two lines, end: {lines:?}");
        assert_eq!(without_time(&lines[1]), without_time(&lines[2]));
        let line = object(&lines[1]);
        assert_eq!(line["msg"], "[DRAIN - EVENT] request");
        assert_eq!(line["file_name"], "a.json");
    }

    #[test]
    fn another_subscriber_gets_the_access_line_as_an_event() {
        let callsite = access_callsite!();
        let mut went = None;
        let lines = theirs(|| {
            went = Some(super::access_line(
                callsite,
                Instant::now(),
                some_access_fields,
            ))
        });
        assert_eq!(went, Some(AccessLineWent::Dispatched));
        let line = object(&lines[0]);
        assert_eq!(line["msg"], "request");
        assert_eq!(line["target"], "llmux::access");
        assert!(line[PRERENDERED]
            .as_str()
            .unwrap()
            .contains(r#","status":200"#));
    }

    #[test]
    fn lines_carry_every_bunyan_core_key_first_then_the_fields_in_order() {
        let lines = ours("info", access_line);
        let keys = keys_once(&lines[0]);
        assert_eq!(
            keys[..10],
            ["v", "name", "msg", "level", "hostname", "pid", "time", "target", "line", "file"]
        );
        assert_eq!(keys[10], "request_id");
        let line = object(&lines[0]);
        assert_eq!(line["v"], 0);
        assert_eq!(line["name"], "llmux");
        assert_eq!(line["msg"], "request");
        assert_eq!(line["level"], 30);
        assert_eq!(line["pid"], std::process::id());
        assert_eq!(line["target"], "llmux::access");
        assert_eq!(line["model"], "gpt \"quoted\"\n\u{1}é");
        assert_eq!(line["not_a_number"], Value::Null);
        assert_eq!(line["error"], "upstream \"down\"");
        assert!(!line.contains_key("ttft_ms"), "a None field is left out");
    }

    #[test]
    fn fields_named_after_core_keys_are_not_written_twice() {
        let lines = ours("debug", || {
            tracing::warn!(
                name = "mine",
                msg = "mine",
                level = 1,
                time = "now",
                target = "t",
                line = 3,
                file = "f",
                hostname = "h",
                pid = 1,
                v = 9,
                r#type = "raw",
                "clash"
            )
        });
        let line = object(&lines[0]);
        assert_eq!(line["name"], "llmux");
        assert_eq!(line["msg"], "clash");
        assert_eq!(line["level"], 40);
        assert_eq!(line["type"], "raw");
        assert_eq!(line.len(), 11);
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let long_clean = "a".repeat(40);
        let late_quote = format!("{}\"", "b".repeat(33));
        for text in [
            "",
            "plain",
            "quote \" inside",
            "back\\slash",
            "new\nline",
            "\u{1}\u{1f}\u{7f}",
            "é ✓ 🦀",
            long_clean.as_str(),
            late_quote.as_str(),
        ] {
            let mut ours = Vec::new();
            json_string(&mut ours, text);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_byte_at_every_place_of_a_word_is_checked_like_serde_json() {
        // Two eight-byte words plus a remainder: each ASCII byte at each of 19 places, among bytes
        // next to the special ones (`!` after `"`, `[` and `]` around `\`, DEL).
        for byte in 0..0x80u8 {
            for place in 0..19 {
                let mut text: Vec<u8> = b"\x21\x5b\x5d\x7fA"
                    .iter()
                    .copied()
                    .cycle()
                    .take(19)
                    .collect();
                text[place] = byte;
                let text = String::from_utf8(text).unwrap();
                let mut ours = Vec::new();
                json_string(&mut ours, &text);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&text).unwrap(),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn floats_are_written_as_ryu_writes_them() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            2.0,
            0.5,
            1.25,
            1e-7,
            1e-6,
            1e-5,
            123.456,
            5e-324,
            f64::MIN_POSITIVE,
            9_999_999_999_999_998.0,
            1e16,
            -1e16,
            1e17,
            1.5e300,
            f64::MAX,
            f64::MIN,
        ];
        // Durations as the access line computes them, from a nanosecond to hours.
        for nanos in [1u64, 999, 1_000, 1_234_567, 20_000_001, 3_600_000_000_123] {
            values.push(Duration::from_nanos(nanos).as_secs_f64() * 1000.0);
        }
        // And a spread of every magnitude, from a fixed xorshift sequence.
        let mut bits = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            bits ^= bits << 13;
            bits ^= bits >> 7;
            bits ^= bits << 17;
            let value = f64::from_bits(bits);
            if value.is_finite() {
                values.push(value);
            }
        }
        for value in values {
            let mut ours = Vec::new();
            push_float(&mut ours, value);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                ryu::Buffer::new().format_finite(value),
                "{value:e}"
            );
        }
    }

    #[test]
    fn the_filter_decides_which_lines_are_written() {
        let lines = ours("warn", || {
            tracing::info!("hidden");
            tracing::error!(code = 1, "shown");
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(object(&lines[0])["level"], 50);
    }

    #[test]
    fn an_event_without_a_message_takes_its_target_like_before() {
        let log = || tracing::info!(target: "llmux::quiet", count = 2);
        let (new, old) = (ours("info", log), theirs(log));
        assert_eq!(object(&new[0])["msg"], "llmux::quiet");
        assert_eq!(object(&new[0])["msg"], object(&old[0])["msg"]);
    }

    #[test]
    fn spans_write_start_and_end_lines_and_lend_their_fields_like_before() {
        let log = || {
            let span = tracing::info_span!("reload", file_name = "a.json", count = 3);
            let _entered = span.enter();
            tracing::info!(items = 4, "inside");
        };
        let (new, old) = (ours("info", log), theirs(log));
        assert_eq!(new.len(), 3, "{new:?}");
        assert_eq!(old.len(), 3, "{old:?}");
        for (new, old) in new.iter().zip(&old) {
            let (mut new, mut old) = (object(new), object(old));
            for key in ["time", "line", "elapsed_milliseconds"] {
                new.remove(key);
                old.remove(key);
            }
            assert_eq!(new, old);
        }
        let inside = object(&new[1]);
        assert_eq!(inside["msg"], "[RELOAD - EVENT] inside");
        assert_eq!(inside["file_name"], "a.json");
        assert_eq!(inside["count"], 3);
    }

    #[test]
    fn an_event_field_named_like_its_spans_field_is_written_once() {
        // tracing_bunyan_formatter wrote such a key twice.
        let lines = ours("info", || {
            let span = tracing::info_span!("reload", count = 3);
            let _entered = span.enter();
            tracing::info!(count = 4, "inside");
        });
        assert_eq!(object(&lines[1])["count"], 4, "the event's own field wins");
    }

    #[test]
    fn lines_from_the_log_crate_carry_their_own_target() {
        let capture = Capture::default();
        let sink = capture.clone();
        let subscriber = subscriber("llmux", "info", move || sink.clone()).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let record = tracing_log::log::Record::builder()
                .target("awc::client")
                .level(tracing_log::log::Level::Warn)
                .file(Some("awc/src/lib.rs"))
                .line(Some(7))
                .args(format_args!("from log"))
                .build();
            tracing_log::format_trace(&record).unwrap();
        });
        let line = object(&capture.lines()[0]);
        assert_eq!(line["msg"], "from log");
        assert_eq!(line["target"], "awc::client");
        assert_eq!(line["file"], "awc/src/lib.rs");
        assert_eq!(line["line"], 7);
        assert_eq!(line["level"], 40);
        assert!(line.keys().all(|key| !key.starts_with("log.")), "{line:?}");
    }

    #[test]
    fn lines_of_any_length_stay_whole_one_a_line() {
        let lines = ours("info", || {
            for i in 0..200u64 {
                let long = "x".repeat(if i == 100 { 100_000 } else { 10 });
                tracing::info!(i, long = long.as_str(), "line");
            }
        });
        assert_eq!(lines.len(), 200);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(object(line)["i"], i);
        }
    }
}
