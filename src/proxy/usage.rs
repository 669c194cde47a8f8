//! Token usage, read from every answer as it passes and never re-serialized: `usage` of JSON
//! answers, the usage event of streams, estimated with o200k_base when the backend reports none.
//!
//! Chat and completions streams carry usage only when the request set
//! `stream_options.include_usage`. When the client did not, llmux sets it upstream
//! ([`ask_for_usage`]) and removes the extra event it brings (empty `choices`, a `usage`) from
//! what the client receives, so the client sees the stream it asked for. To do that the reader
//! frames the stream into SSE events: it holds back at most the bytes of one incomplete event and
//! passes every complete event on as soon as its chunk arrives.
use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::json::splice;
use super::sse::{event_data, event_end};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// How much of an answer is kept to read its usage or count its tokens. Longer JSON answers keep
/// only their last [`TAIL_BYTES`], where `usage` sits.
const COPY_LIMIT: usize = 1024 * 1024;
const TAIL_BYTES: usize = 64 * 1024;
/// An SSE event longer than this is passed on unread.
const EVENT_LIMIT: usize = 1024 * 1024;
/// Events inspected for the first token before giving up on time to first token.
const FIRST_TOKEN_EVENTS: u32 = 64;
/// A stream's kept chunks are read into the text of their events (what an estimate counts)
/// once they add up to this (issue 16): the chunks are slices of the upstream connection's read
/// buffer, and holding them kept every one of those buffers alive to the end of the stream
/// (40 KB per stream of 300 events over the bare forwarder, growing with the answer up to
/// `COPY_LIMIT`).
const STREAM_TEXT_AT: usize = 16 * 1024;

/// Tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens served from the backend's prompt cache (part of `prompt`).
    pub cached: u64,
    /// Reasoning tokens (part of `completion`).
    pub reasoning: u64,
    /// Counted by llmux because the backend reported none.
    pub estimated: bool,
}

/// Whether answers on `path` carry token usage (see `Operation::counts_tokens`).
fn counts_tokens(path: &str) -> bool {
    matches!(
        path,
        "v1/chat/completions" | "v1/completions" | "v1/embeddings" | "v1/responses"
    )
}

/// For a stream (of an operation that can ask for usage) whose request did not set
/// `stream_options.include_usage`: the body with it set (only those bytes change) and where the
/// edit starts. `stream_options` is where that member's value is, as `pipeline::identify` found
/// it. `None` when nothing needs adding.
pub fn ask_for_usage(
    body: &Bytes,
    stream: bool,
    stream_options: Option<Range<usize>>,
) -> Option<(Bytes, usize)> {
    if !stream {
        return None;
    }
    let Some(span) = stream_options else {
        let open = body.iter().position(|&b| b == b'{')?;
        let body = splice(
            body,
            open + 1..open + 1,
            r#""stream_options":{"include_usage":true},"#,
        );
        return Some((body, open + 1));
    };
    let options =
        match serde_json::from_slice::<Option<serde_json::Map<String, Value>>>(&body[span.clone()])
        {
            Ok(Some(mut options)) => {
                if options.get("include_usage") == Some(&Value::Bool(true)) {
                    return None;
                }
                options.insert("include_usage".into(), Value::Bool(true));
                serde_json::to_string(&options).ok()?
            }
            Ok(None) => r#"{"include_usage":true}"#.to_owned(),
            // Not an object: the upstream will say so; llmux leaves it alone.
            Err(_) => return None,
        };
    let at = span.start;
    Some((splice(body, span, &options), at))
}

/// Reads one answer's usage as its body passes. Built with the request; [`UsageReader::begin`]
/// decides, once the response head is known, whether there is anything to read.
#[derive(Debug)]
pub struct UsageReader {
    path: &'static str,
    /// The client's request body, for estimating prompt tokens.
    request: Bytes,
    /// llmux asked for the usage event: remove it from what the client receives.
    strip_usage_event: bool,
    event_stream: bool,
    /// The answer's chunks, up to `COPY_LIMIT` bytes.
    copy: VecDeque<Bytes>,
    copy_len: usize,
    /// The answer outgrew `COPY_LIMIT`: `copy` holds only its tail.
    truncated: bool,
    /// An event stream's text read from the chunks that `copy` no longer holds (see
    /// `STREAM_TEXT_AT`); `copy` starts at an event's start then.
    stream_text: String,
    /// Bytes in `copy` (`copy_len` counts the whole answer).
    kept_len: usize,
    /// The bytes of the current incomplete SSE event.
    pending: BytesMut,
    /// An event outgrew `EVENT_LIMIT`: the rest of the stream passes unread.
    unframed: bool,
    reported: Option<Usage>,
    first_token: Option<Duration>,
    events_inspected: u32,
    /// An answer came and is read (see `begin`): without one there is no usage.
    reading: bool,
}

impl UsageReader {
    pub fn new(path: &'static str, request: Bytes, strip_usage_event: bool) -> Self {
        Self {
            path,
            request,
            strip_usage_event,
            event_stream: false,
            copy: VecDeque::new(),
            copy_len: 0,
            truncated: false,
            stream_text: String::new(),
            kept_len: 0,
            pending: BytesMut::new(),
            unframed: false,
            reported: None,
            first_token: None,
            events_inspected: 0,
            reading: false,
        }
    }

    /// Whether llmux asked for the usage event itself and removes it from the client's stream.
    pub fn strips_usage_event(&self) -> bool {
        self.strip_usage_event
    }

    /// Whether this answer is read: successful answers on paths that count tokens.
    pub fn begin(&mut self, status: u16, event_stream: bool) -> bool {
        self.event_stream = event_stream;
        self.reading = (200..300).contains(&status) && counts_tokens(self.path);
        self.reading
    }

    /// When the first token arrived (streams only).
    pub fn first_token(&self) -> Option<Duration> {
        self.first_token
    }

    /// Takes one chunk of the answer and returns what the client gets now: the chunk itself,
    /// unless llmux is removing its own usage event, in which case complete events minus that
    /// one (`None` while only part of an event has arrived).
    pub fn chunk(&mut self, chunk: Bytes, elapsed: Duration) -> Option<Bytes> {
        self.keep_copy(chunk.clone());
        if !self.event_stream || self.unframed {
            return Some(chunk);
        }
        let data = match self.pending.is_empty() {
            true => chunk.clone(),
            false => {
                self.pending.extend_from_slice(&chunk);
                self.pending.split().freeze()
            }
        };
        // Built only once an event is removed: until then the output is a slice of `data`.
        let mut edited: Option<BytesMut> = None;
        let mut start = 0;
        while let Some(end) = event_end(&data[start..]).map(|end| start + end) {
            let keep = self.event(&data[start..end], elapsed);
            match (&mut edited, keep) {
                (Some(out), true) => out.extend_from_slice(&data[start..end]),
                (Some(_), false) => {}
                (None, true) => {}
                (None, false) => edited = Some(BytesMut::from(&data[..start])),
            }
            start = end;
        }
        let rest = &data[start..];
        if rest.len() > EVENT_LIMIT {
            // Not SSE as llmux knows it: stop reading and hold nothing back.
            self.unframed = true;
            return match self.strip_usage_event {
                true => Some(data),
                false => Some(chunk),
            };
        }
        self.pending.extend_from_slice(rest);
        if !self.strip_usage_event {
            return Some(chunk);
        }
        let out = match edited {
            None => data.slice(..start),
            Some(out) => out.freeze(),
        };
        (!out.is_empty()).then_some(out)
    }

    /// At the end of the answer: what is still held back (an event without its blank line).
    pub fn flush(&mut self, elapsed: Duration) -> Option<Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let rest = self.pending.split().freeze();
        let keep = self.event(&rest, elapsed);
        (self.strip_usage_event && keep).then_some(rest)
    }

    /// The answer's usage: as reported, else estimated from the request and what the answer said.
    pub fn finish(&mut self) -> Option<Usage> {
        if !self.reading {
            return None;
        }
        if !self.event_stream && self.reported.is_none() {
            self.reported = json_usage(&self.copied());
        }
        if let Some(usage) = self.reported {
            return Some(usage);
        }
        let answer = match self.truncated {
            true => String::new(),
            false => match self.event_stream {
                true => std::mem::take(&mut self.stream_text) + &stream_text(&self.copied()),
                false => answer_text(&self.copied()),
            },
        };
        Some(Usage {
            prompt: count_tokens(&request_text(&self.request)),
            completion: count_tokens(&answer),
            cached: 0,
            reasoning: 0,
            estimated: true,
        })
    }

    /// Keeps the chunk (a reference, not a copy); past `COPY_LIMIT`, only the last chunks that
    /// make up at least `TAIL_BYTES`.
    fn keep_copy(&mut self, chunk: Bytes) {
        self.copy_len += chunk.len();
        self.kept_len += chunk.len();
        self.copy.push_back(chunk);
        if self.copy_len <= COPY_LIMIT {
            if self.event_stream && self.kept_len >= STREAM_TEXT_AT {
                self.read_stream_text();
            }
            return;
        }
        self.truncated = true;
        if self.event_stream {
            // A truncated stream's text is not counted (`finish`): nothing to keep.
            self.copy.clear();
            self.kept_len = 0;
            self.stream_text = String::new();
            return;
        }
        while let Some(front) = self.copy.front() {
            if self.copy_len - front.len() < TAIL_BYTES {
                break;
            }
            self.copy_len -= front.len();
            self.kept_len -= front.len();
            self.copy.pop_front();
        }
    }

    /// Reads the kept chunks' complete events into `stream_text` and lets the chunks go; the
    /// part of an event that has not ended yet stays, copied. The text is the same as reading
    /// the whole stream at the end: `stream_text` reads event by event, and this cuts at an
    /// event's end.
    fn read_stream_text(&mut self) {
        let kept = self.copied();
        let mut end = 0;
        while let Some(next) = event_end(&kept[end..]) {
            end += next;
        }
        let text = stream_text(&kept[..end]);
        let rest = Bytes::copy_from_slice(&kept[end..]);
        self.stream_text.push_str(&text);
        self.copy.clear();
        self.kept_len = rest.len();
        if !rest.is_empty() {
            self.copy.push_back(rest);
        }
    }

    /// The kept chunks as one slice.
    fn copied(&self) -> Cow<'_, [u8]> {
        match self.copy.len() {
            0 => Cow::Borrowed(&[]),
            1 => Cow::Borrowed(&self.copy[0]),
            _ => {
                // One copy per chunk: collecting the bytes one by one cost about 4
                // instructions per byte (issue 16).
                let mut whole = Vec::with_capacity(self.copy_len);
                for chunk in &self.copy {
                    whole.extend_from_slice(chunk);
                }
                Cow::Owned(whole)
            }
        }
    }

    /// Reads one complete SSE event; false when it is llmux's own usage event, to be removed.
    fn event(&mut self, event: &[u8], elapsed: Duration) -> bool {
        let Some(data) = event_data(event) else {
            return true;
        };
        let has_usage = carries_usage(data);
        let look_for_token =
            self.first_token.is_none() && self.events_inspected < FIRST_TOKEN_EVENTS;
        if !has_usage && !look_for_token {
            return true;
        }
        let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else {
            return true;
        };
        if look_for_token {
            self.events_inspected += 1;
            if event.has_token() {
                self.first_token = Some(elapsed);
            }
        }
        if !has_usage {
            return true;
        }
        let reported = match event.kind.as_deref() {
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                event.response.and_then(|response| response.usage)
            }
            _ => event.usage,
        };
        if let Some(usage) = reported {
            self.reported = Some(usage.into());
        }
        let usage_only = event.choices.as_ref().is_some_and(Vec::is_empty);
        !(self.strip_usage_event && usage_only)
    }
}

static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// Whether the event has `"usage":{`: chunks of a stream with usage carry `"usage":null` until
/// the last one.
fn carries_usage(data: &[u8]) -> bool {
    USAGE_KEY.find_iter(data).any(|at| {
        data[at + 7..]
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b':'))
            == Some(&b'{')
    })
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(default)]
    usage: Option<ReportedUsage>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    response: Option<ResponseUsage>,
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    #[serde(default)]
    usage: Option<ReportedUsage>,
}

impl Event<'_> {
    fn has_token(&self) -> bool {
        let choices = self.choices.iter().flatten();
        let from_choices = choices.into_iter().any(|choice| {
            let delta = choice.delta.as_ref();
            [
                delta.and_then(|d| d.content),
                delta.and_then(|d| d.reasoning_content),
                delta.and_then(|d| d.reasoning),
                delta.and_then(|d| d.tool_calls),
                choice.text,
            ]
            .into_iter()
            .any(non_empty)
        });
        let from_delta = self
            .kind
            .as_deref()
            .is_some_and(|kind| kind.ends_with(".delta"))
            && self.delta.is_some_and(|delta| non_empty(Some(delta)));
        from_choices || from_delta
    }
}

fn non_empty(value: Option<&RawValue>) -> bool {
    value.is_some_and(|raw| !matches!(raw.get(), "null" | "\"\"" | "[]"))
}

/// `usage` as chat, completions, embeddings, responses and transcriptions report it.
#[derive(Debug, Default, Deserialize)]
struct ReportedUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default)]
    completion_tokens_details: Option<Details>,
    #[serde(default)]
    output_tokens_details: Option<Details>,
}

#[derive(Debug, Default, Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<ReportedUsage> for Usage {
    fn from(usage: ReportedUsage) -> Self {
        let prompt_details = usage.prompt_tokens_details.or(usage.input_tokens_details);
        let completion_details = usage
            .completion_tokens_details
            .or(usage.output_tokens_details);
        Self {
            prompt: usage.prompt_tokens.or(usage.input_tokens).unwrap_or(0),
            completion: usage.completion_tokens.or(usage.output_tokens).unwrap_or(0),
            cached: prompt_details.and_then(|d| d.cached_tokens).unwrap_or(0),
            reasoning: completion_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            estimated: false,
        }
    }
}

/// `usage` of a JSON answer: the value of its last `"usage"` key. OpenAI-style answers put it at
/// the top level, after the content, and a `"usage"` inside a string is escaped, so searching
/// from the end finds it without parsing the whole answer (embeddings answers run to megabytes).
fn json_usage(answer: &[u8]) -> Option<Usage> {
    // The `u` bytes from the end, each checked for `"usage"`: `memrchr` is vectorized where
    // the reverse substring search is not (issue 16: about 4 instructions per byte of answer),
    // and the usage key is near the end, where few `u`s come after it.
    let starts = memchr::memrchr_iter(b'u', answer)
        .filter_map(|u| u.checked_sub(1))
        .filter(|&at| answer[at..].starts_with(b"\"usage\""));
    for at in starts {
        let rest = &answer[at + 7..];
        let Some(colon) = rest.iter().position(|b| !b.is_ascii_whitespace()) else {
            continue;
        };
        if rest[colon] != b':' {
            continue;
        }
        return UsageWalk::new(&rest[colon + 1..])
            .reported()
            .map(Usage::from);
    }
    None
}

/// The known keys of an object seen so far: serde refuses a key twice (even after a `null`).
#[derive(Default)]
struct Seen(u16);

impl Seen {
    /// `Some` the first time key number `index` comes.
    fn first(&mut self, index: u16) -> Option<()> {
        let bit = 1 << index;
        let first = self.0 & bit == 0;
        self.0 |= bit;
        first.then_some(())
    }
}

/// Reads a `usage` value (an object of counts and details objects, or `null`) the way serde would
/// read `Option<ReportedUsage>`: the counts llmux keeps, every other member skipped, and nothing
/// (`None`) for what serde would refuse: a count that is not a whole non-negative number, a key
/// twice, JSON that is not well formed. Hand-written because serde's derived reader cost about
/// 4k instructions for the ~150 bytes of every JSON answer's usage, more than the rest of the
/// answer's handling (issue 16); this walk costs a few instructions per byte. Keys are compared
/// as written: an escaped key (`"\u0070rompt_tokens"`) is skipped like an unknown one.
struct UsageWalk<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> UsageWalk<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn reported(mut self) -> Option<ReportedUsage> {
        if self.literal(b"null") {
            return None;
        }
        /// In `Seen`'s order, each with its closing quote (see `known_key`).
        const KEYS: [&[u8]; 8] = [
            b"prompt_tokens\"",
            b"completion_tokens\"",
            b"input_tokens\"",
            b"output_tokens\"",
            b"prompt_tokens_details\"",
            b"input_tokens_details\"",
            b"completion_tokens_details\"",
            b"output_tokens_details\"",
        ];
        let mut usage = ReportedUsage::default();
        let mut seen = Seen::default();
        self.object(
            |walk| walk.known_key(&KEYS),
            |walk, key| match key {
                Some(0) => seen
                    .first(0)
                    .and_then(|()| walk.count(&mut usage.prompt_tokens)),
                Some(1) => seen
                    .first(1)
                    .and_then(|()| walk.count(&mut usage.completion_tokens)),
                Some(2) => seen
                    .first(2)
                    .and_then(|()| walk.count(&mut usage.input_tokens)),
                Some(3) => seen
                    .first(3)
                    .and_then(|()| walk.count(&mut usage.output_tokens)),
                Some(4) => seen
                    .first(4)
                    .and_then(|()| walk.details(&mut usage.prompt_tokens_details)),
                Some(5) => seen
                    .first(5)
                    .and_then(|()| walk.details(&mut usage.input_tokens_details)),
                Some(6) => seen
                    .first(6)
                    .and_then(|()| walk.details(&mut usage.completion_tokens_details)),
                Some(7) => seen
                    .first(7)
                    .and_then(|()| walk.details(&mut usage.output_tokens_details)),
                _ => walk.skip_value(0),
            },
        )?;
        Some(usage)
    }

    fn details(&mut self, slot: &mut Option<Details>) -> Option<()> {
        if self.literal(b"null") {
            return Some(());
        }
        const KEYS: [&[u8]; 2] = [b"cached_tokens\"", b"reasoning_tokens\""];
        let mut details = Details::default();
        let mut seen = Seen::default();
        self.object(
            |walk| walk.known_key(&KEYS),
            |walk, key| match key {
                Some(0) => seen
                    .first(0)
                    .and_then(|()| walk.count(&mut details.cached_tokens)),
                Some(1) => seen
                    .first(1)
                    .and_then(|()| walk.count(&mut details.reasoning_tokens)),
                _ => walk.skip_value(0),
            },
        )?;
        *slot = Some(details);
        Some(())
    }

    /// `{ "key": value, ... }`, each key read by `key` (called at its opening quote), each value
    /// by `member`.
    fn object<Key>(
        &mut self,
        mut key: impl FnMut(&mut Self) -> Option<Key>,
        mut member: impl FnMut(&mut Self, Key) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key = key(self)?;
            self.expect(b':')?;
            member(self, key)?;
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The key at `at` (its opening quote) as serde reads a struct's: `Some(index)` when it is
    /// exactly `keys[index]` (each written with its closing quote: no longer key starts so),
    /// compared in place rather than searched for its end first (the search and a compare
    /// were 100 to 150 instructions a key, issue 16); `None` for any other key, a string that
    /// must be UTF-8 (serde reads it as a `str` to compare it). A known key written with an
    /// escape is another key.
    #[inline(always)]
    fn known_key<const N: usize>(&mut self, keys: &[&'static [u8]; N]) -> Option<Option<usize>> {
        let rest = self.bytes.get(self.at + 1..)?;
        for (index, known) in keys.iter().enumerate() {
            if rest.starts_with(known) {
                self.at += 1 + known.len();
                return Some(Some(index));
            }
        }
        let other = self.string()?;
        (other.is_ascii() || std::str::from_utf8(other).is_ok()).then_some(None)
    }

    /// A whole non-negative number (or `null`), its digits checked and added up in one pass.
    fn count(&mut self, slot: &mut Option<u64>) -> Option<()> {
        if self.peek()? == b'n' {
            return self.literal(b"null").then_some(());
        }
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(digit) = self.bytes.get(self.at).and_then(|b| b.checked_sub(b'0')) {
            if digit > 9 {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes[start] == b'0';
        let fraction = matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'));
        if digits == 0 || leading_zero || fraction {
            return None;
        }
        *slot = Some(value);
        Some(())
    }

    /// Any JSON value, unread.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        // serde_json's own limit: deeper nesting is refused.
        if depth > 128 {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            // The keys of an ignored object are ignored strings: serde checks no UTF-8 there.
            b'{' => self.object(Self::string, |walk, _| walk.skip_value(depth + 1)),
            b'[' => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    match self.next()? {
                        b',' => continue,
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// A number, checked as serde_json checks one it ignores (JSON's grammar, the value never
    /// computed: parsing it as `f64` cost more than the rest of the walk, issue 16):
    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn skip_number(&mut self) -> Option<()> {
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.skip_digits(),
            _ => return None,
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.at_least_one_digit()?;
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        // serde reads `01` as `0` followed by a stray digit.
        match self.bytes.get(self.at) {
            Some(b'0'..=b'9') => None,
            _ => Some(()),
        }
    }

    fn at_least_one_digit(&mut self) -> Option<()> {
        self.bytes.get(self.at).filter(|b| b.is_ascii_digit())?;
        self.skip_digits();
        Some(())
    }

    fn skip_digits(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    /// A string's raw contents, escapes as written, checked as serde_json checks a string it
    /// ignores: no control byte, every escape one of JSON's.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            self.at = crate::swar::json_special(self.bytes, self.at)?;
            match self.bytes[self.at] {
                b'"' => {
                    self.at += 1;
                    return Some(&self.bytes[start..self.at - 1]);
                }
                b'\\' => self.escape()?,
                _ => return None,
            }
        }
    }

    /// The escape at `at` (its backslash): `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, or
    /// `\u` and four hex digits (a lone surrogate too: serde checks those only in what it reads).
    fn escape(&mut self) -> Option<()> {
        let escaped = *self.bytes.get(self.at + 1)?;
        self.at += 2;
        match escaped {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => {
                let digits = self.bytes.get(self.at..self.at + 4)?;
                self.at += 4;
                digits.iter().all(u8::is_ascii_hexdigit).then_some(())
            }
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let matched = self.peek().is_some() && self.bytes[self.at..].starts_with(word);
        if matched {
            self.at += word.len();
        }
        matched
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&byte) = self.bytes.get(self.at) {
            if !matches!(byte, b' ' | b'\t' | b'\r' | b'\n') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }
}

static O200K_BASE: OnceLock<Option<CoreBPE>> = OnceLock::new();

/// The tokenizer, built on the first call (`None` when its ranks cannot be built).
fn o200k_base() -> Option<&'static CoreBPE> {
    O200K_BASE
        .get_or_init(|| {
            tiktoken_rs::o200k_base()
                .inspect_err(
                    |error| tracing::error!(%error, "cannot build the o200k_base tokenizer"),
                )
                .ok()
        })
        .as_ref()
}

/// Set once the tokenizer's build has been started (by the first count, or [`load_tokenizer`]).
static O200K_LOADING: std::sync::Once = std::sync::Once::new();

/// Starts building the tokenizer on a thread of its own. The ranks take about 50 MB and a second
/// or more to build (seconds in a debug build), so llmux builds them only when the first estimate
/// is needed (most backends report usage; an idle llmux stays small, issue 16), and never on a
/// worker: a stream paused mid-answer for over 10 s when its count built them in place.
fn start_loading_tokenizer() {
    O200K_LOADING.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("llmux-tokenizer".into())
            .spawn(|| o200k_base().is_some());
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot build the tokenizer on its own thread");
        }
    });
}

/// Builds the tokenizer now, on this thread, and says whether it is available: for callers that
/// need exact counts at once (tests, `llmux check`-like tools), never for a request.
pub fn load_tokenizer() -> bool {
    O200K_LOADING.call_once(|| {});
    o200k_base().is_some()
}

/// Tokens of `text` with o200k_base. Until the tokenizer is built (the first call starts it), the
/// count is OpenAI's rule of thumb, a token per four bytes of text, rounded up: the counts are
/// estimates either way (`tokens_estimated`), and no request waits for the ranks.
pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match O200K_BASE.get() {
        Some(Some(bpe)) => bpe.encode_ordinary(text).len() as u64,
        Some(None) => 0,
        None => {
            start_loading_tokenizer();
            rough_token_count(text)
        }
    }
}

/// A token per four bytes, rounded up.
fn rough_token_count(text: &str) -> u64 {
    text.len().div_ceil(4) as u64
}

/// The text a request sends the model: messages, prompt, input, instructions.
pub fn request_text(body: &[u8]) -> String {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let mut text = String::new();
    collect_text(
        &request,
        &[
            "messages",
            "content",
            "text",
            "prompt",
            "input",
            "instructions",
        ],
        &mut text,
    );
    text
}

/// Keys under which answers carry generated text.
const ANSWER_KEYS: &[&str] = &[
    "choices",
    "message",
    "delta",
    "content",
    "text",
    "reasoning_content",
    "refusal",
    "tool_calls",
    "function",
    "arguments",
    "output",
];

fn answer_text(body: &[u8]) -> String {
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let mut text = String::new();
    collect_text(&answer, ANSWER_KEYS, &mut text);
    text
}

/// The text of a stream's events: chat and completions deltas, Responses API text deltas.
fn stream_text(stream: &[u8]) -> String {
    let mut text = String::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let end = event_end(rest).unwrap_or(rest.len());
        let Some(event) =
            event_data(&rest[..end]).and_then(|d| serde_json::from_slice::<Value>(d).ok())
        else {
            rest = &rest[end..];
            continue;
        };
        match event.get("type").and_then(Value::as_str) {
            Some(kind) if kind.ends_with("text.delta") => {
                collect_pieces(&event["delta"], &[], "", &mut text);
            }
            Some(_) => {}
            None => collect_pieces(&event, ANSWER_KEYS, "", &mut text),
        }
        rest = &rest[end..];
    }
    text
}

/// Appends every string found under `keys` (through arrays and nested objects) to `out`, each
/// followed by a newline.
fn collect_text(value: &Value, keys: &[&str], out: &mut String) {
    collect_pieces(value, keys, "\n", out);
}

/// As `collect_text`, with `separator` after each string (none for the pieces of a stream).
fn collect_pieces(value: &Value, keys: &[&str], separator: &str, out: &mut String) {
    match value {
        Value::String(text) => {
            out.push_str(text);
            out.push_str(separator);
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_pieces(item, keys, separator, out)),
        Value::Object(members) => members
            .iter()
            .filter(|(key, _)| keys.contains(&key.as_str()))
            .for_each(|(_, member)| collect_pieces(member, keys, separator, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_ask(path: &str, body: &str, expected: Option<&str>) {
        let body = Bytes::from(body.to_owned());
        let identity = crate::pipeline::identify::identify(&body).unwrap();
        let out = match path {
            "v1/chat/completions" | "v1/completions" => {
                ask_for_usage(&body, identity.stream, identity.stream_options)
            }
            _ => None,
        };
        let out = out.map(|(b, _)| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(out.as_deref(), expected, "{body:?}");
    }

    #[test]
    fn include_usage_is_added_only_to_streams_that_lack_it() {
        let chat = "v1/chat/completions";
        check_ask(
            chat,
            r#"{"model":"m","stream":true}"#,
            Some(r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#),
        );
        check_ask(
            "v1/completions",
            r#" {"model":"m","stream": true,"stream_options":null}"#,
            Some(r#" {"model":"m","stream": true,"stream_options":{"include_usage":true}}"#),
        );
        check_ask(
            chat,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"x":1}"#,
            Some(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"x":1}"#),
        );
        check_ask(
            chat,
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            None,
        );
        check_ask(chat, r#"{"model":"m","stream":false}"#, None);
        check_ask(chat, r#"{"model":"m","messages":[]}"#, None);
        check_ask(
            chat,
            r#"{"model":"m","stream":true,"stream_options":3}"#,
            None,
        );
        check_ask("v1/responses", r#"{"model":"m","stream":true}"#, None);
    }

    fn run(reader: &mut UsageReader, chunks: &[&str]) -> String {
        assert!(reader.begin(200, true));
        let mut out = String::new();
        for chunk in chunks {
            if let Some(bytes) = reader.chunk(Bytes::from(chunk.to_string()), Duration::ZERO) {
                out.push_str(std::str::from_utf8(&bytes).unwrap());
            }
        }
        if let Some(bytes) = reader.flush(Duration::ZERO) {
            out.push_str(std::str::from_utf8(&bytes).unwrap());
        }
        out
    }

    const CHUNK: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn the_usage_event_llmux_asked_for_is_removed_wherever_chunks_split() {
        let whole = format!("{CHUNK}{USAGE}{DONE}");
        for split in 0..whole.len() {
            let mut reader = UsageReader::new("v1/chat/completions", Bytes::new(), true);
            let out = run(&mut reader, &[&whole[..split], &whole[split..]]);
            assert_eq!(out, format!("{CHUNK}{DONE}"), "split at {split}");
            let usage = reader.finish().unwrap();
            assert_eq!(
                (
                    usage.prompt,
                    usage.completion,
                    usage.cached,
                    usage.estimated
                ),
                (9, 4, 2, false)
            );
        }
    }

    #[test]
    fn a_client_that_asked_for_usage_gets_the_stream_untouched() {
        let mut reader = UsageReader::new("v1/chat/completions", Bytes::new(), false);
        let whole = format!("{CHUNK}{USAGE}{DONE}");
        let out = run(&mut reader, &[&whole[..10], &whole[10..]]);
        assert_eq!(out, whole);
        assert_eq!(reader.finish().unwrap().prompt, 9);
    }

    #[test]
    fn responses_streams_report_usage_in_response_completed() {
        let mut reader = UsageReader::new("v1/responses", Bytes::new(), false);
        let events = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":7,\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":1}}}}\n\n",
        ];
        run(&mut reader, &events);
        let usage = reader.finish().unwrap();
        assert_eq!((usage.prompt, usage.completion, usage.reasoning), (7, 3, 1));
    }

    #[test]
    fn json_usage_is_the_value_of_the_last_usage_key() {
        let answer =
            br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        assert_eq!(json_usage(answer).unwrap().completion, 2);
        assert_eq!(json_usage(&answer[10..]).unwrap().prompt, 5);
        assert_eq!(json_usage(b"{\"x\":1}"), None);
        assert_eq!(json_usage(br#"{"usage":null}"#), None);
        let tricky = br#"{"usage":{"prompt_tokens":1},"choices":[{"message":{"content":"say \"usage\": 5","role":"usage"}}]}"#;
        assert_eq!(json_usage(tricky).unwrap().prompt, 1);
    }

    /// What serde reads from the same bytes: the walk must agree with it (issue 16).
    fn serde_usage(bytes: &[u8]) -> Option<Usage> {
        serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Option<ReportedUsage>>()
            .next()?
            .ok()
            .flatten()
            .map(Usage::from)
    }

    fn check_walk(text: &str) {
        let walked = UsageWalk::new(text.as_bytes()).reported().map(Usage::from);
        assert_eq!(walked, serde_usage(text.as_bytes()), "{text}");
    }

    #[test]
    fn a_usage_that_is_not_an_object_is_no_usage() {
        // serde's derived reader would take `[1]` as the fields in order; no API answers so.
        assert_eq!(UsageWalk::new(b"[1]").reported().map(Usage::from), None);
    }

    #[test]
    fn the_usage_walk_reads_what_serde_reads() {
        for text in [
            r#"{"prompt_tokens":25,"completion_tokens":21,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":7}}"#,
            r#"{"input_tokens":7,"output_tokens":3,"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":1}}"#,
            r#" { "prompt_tokens" : 1 , "x" : [1, -2.5e3, "s\"}", {"a": [null, true, false]}], "completion_tokens": null } "#,
            r#"{"prompt_tokens":1}, "choices": []}"#,
            r#"{}"#,
            r#"null"#,
            r#"{"prompt_tokens_details":null,"prompt_tokens":2}"#,
            r#"{"prompt_tokens":18446744073709551615}"#,
            // What serde refuses is no usage at all.
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":01}"#,
            r#"{"prompt_tokens":"1"}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens":null,"prompt_tokens":2}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}"#,
            r#"{"prompt_tokens_details":3}"#,
            r#"{"prompt_tokens":1"#,
            r#"{"prompt_tokens":1,}"#,
            r#"{"x":tru}"#,
            r#"{"x":[1,]}"#,
            r#""#,
            // Numbers it skips, as serde_json checks those it ignores.
            r#"{"x":0,"prompt_tokens":1}"#,
            r#"{"x":-0.5e-3,"prompt_tokens":1}"#,
            r#"{"x":1E+2,"prompt_tokens":1}"#,
            r#"{"x":1e400,"prompt_tokens":1}"#,
            r#"{"x":123456789012345678901234567890,"prompt_tokens":1}"#,
            r#"{"x":01,"prompt_tokens":1}"#,
            r#"{"x":-,"prompt_tokens":1}"#,
            r#"{"x":-a,"prompt_tokens":1}"#,
            r#"{"x":1.,"prompt_tokens":1}"#,
            r#"{"x":.5,"prompt_tokens":1}"#,
            r#"{"x":1e,"prompt_tokens":1}"#,
            r#"{"x":1e+,"prompt_tokens":1}"#,
            r#"{"x":+1,"prompt_tokens":1}"#,
            r#"{"x":1.5.5,"prompt_tokens":1}"#,
            r#"{"x":1e5e5,"prompt_tokens":1}"#,
            r#"{"x":--1,"prompt_tokens":1}"#,
            r#"{"x":1"#,
            // Cut in an escape: no usage, and no panic.
            "{\"prompt_tokens\\",
            "{\"x\":\"\\",
        ] {
            check_walk(text);
        }
    }

    mod walk_proptests {
        use super::*;
        use proptest::prelude::*;

        /// The keys the walk reads and a key it skips. Not an escaped known key: the walk skips
        /// it, where serde reads it (see `UsageWalk`; no backend escapes plain ASCII keys).
        const KEYS: &[&str] = &[
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "input_tokens_details",
            "output_tokens_details",
            "cached_tokens",
            "reasoning_tokens",
            "audio_tokens",
        ];

        /// A count as backends write them, and the near misses serde refuses.
        fn count() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => any::<u64>().prop_map(|n| n.to_string()),
                2 => (0u64..1000).prop_map(|n| n.to_string()),
                1 => Just("null".to_owned()),
                1 => prop::sample::select(vec![
                    "18446744073709551616", "-1", "01", "1.0", "1e2", "\"1\"", "nul", "true", "00",
                ])
                .prop_map(str::to_owned),
            ]
        }

        /// Any JSON value, as text, a few levels deep.
        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                count(),
                any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| f.to_string()),
                prop::sample::select(vec!["true", "false", "null", "-0.5e-3", "1E+2"])
                    .prop_map(str::to_owned),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(|items| format!("[{}]", items.join(","))),
                    prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(
                        |members| {
                            let members: Vec<String> = members
                                .iter()
                                .map(|(key, value)| format!("\"{key}\":{value}"))
                                .collect();
                            format!("{{{}}}", members.join(","))
                        }
                    ),
                ]
            })
        }

        /// A usage object: known and unknown keys (some twice) with counts, details objects
        /// or any value, whitespace between tokens at times, and what follows it in an answer.
        fn usage() -> impl Strategy<Value = String> {
            // Not an array for a details object: serde reads one as the struct's fields in
            // order, the walk refuses it (no backend writes one; see
            // `a_usage_that_is_not_an_object_is_no_usage`).
            let member = (prop::sample::select(KEYS), prop_oneof![count(), value()])
                .prop_filter("no details array", |(key, value)| {
                    !(key.ends_with("_details") && value.starts_with('['))
                });
            (
                prop::collection::vec(member, 0..8),
                prop::sample::select(vec!["", " ", "\n  "]),
                prop::sample::select(vec!["", "}", ",\"choices\":[]}", " x"]),
            )
                .prop_map(|(members, space, after)| {
                    let members: Vec<String> = members
                        .iter()
                        .map(|(key, value)| format!("{space}\"{key}\"{space}:{space}{value}"))
                        .collect();
                    format!("{{{}{space}}}{after}", members.join(","))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Issue 16: the hand-written walk reads what serde reads from any usage value.
            #[test]
            fn the_usage_walk_reads_what_serde_reads_from_any_usage(text in usage()) {
                let walked = UsageWalk::new(text.as_bytes()).reported().map(Usage::from);
                prop_assert_eq!(walked, serde_usage(text.as_bytes()), "{}", text);
            }

            /// And from any cut or damaged one: the same answer, never a panic.
            #[test]
            fn the_usage_walk_reads_what_serde_reads_from_damaged_usage(
                text in usage(),
                cut in any::<prop::sample::Index>(),
                byte in prop::sample::select(b"{}[],:\"\\ 0-.eEnul\x00\xff".to_vec()),
            ) {
                let mut bytes = text.into_bytes();
                let at = cut.index(bytes.len() + 1);
                let mut cut_short = bytes.clone();
                cut_short.truncate(at);
                let walked = UsageWalk::new(&cut_short).reported().map(Usage::from);
                prop_assert_eq!(walked, serde_usage(&cut_short));
                bytes.insert(at, byte);
                let walked = UsageWalk::new(&bytes).reported().map(Usage::from);
                prop_assert_eq!(walked, serde_usage(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn strings_end_at_their_first_unescaped_quote_wherever_it_falls() {
        // Keys and skipped strings of every length around the eight-byte words and the switch
        // to memchr2, with escapes in every place.
        for length in 0..80 {
            for escape_at in [
                None,
                Some(0),
                Some(7),
                Some(8),
                Some(31),
                Some(32),
                Some(40),
            ] {
                let mut text: String = "k".repeat(length);
                if let Some(at) = escape_at.filter(|at| *at < length) {
                    text.replace_range(at..=at, "\\");
                    text.insert(at + 1, '"');
                }
                let usage = format!(r#"{{"{text}":"{text}","prompt_tokens":{length}}}"#);
                check_walk(&usage);
            }
        }
    }

    #[test]
    fn answers_without_usage_are_estimated_with_o200k_base() {
        assert!(load_tokenizer());
        let request = r#"{"model":"m","messages":[{"role":"user","content":"Hello there"}]}"#;
        let mut reader = UsageReader::new("v1/chat/completions", Bytes::from(request), false);
        assert!(reader.begin(200, false));
        let answer = r#"{"choices":[{"message":{"role":"assistant","content":"General Kenobi"}}]}"#;
        reader.chunk(Bytes::from(answer), Duration::ZERO);
        let usage = reader.finish().unwrap();
        assert!(usage.estimated);
        assert_eq!(usage.prompt, count_tokens("Hello there\n"));
        assert_eq!(usage.completion, count_tokens("General Kenobi\n"));
        assert!(usage.prompt > 0 && usage.completion > 0);
    }

    #[test]
    fn until_the_tokenizer_is_built_a_count_is_a_token_per_four_bytes() {
        assert_eq!(rough_token_count(""), 0);
        assert_eq!(rough_token_count("abc"), 1);
        assert_eq!(rough_token_count("abcd"), 1);
        assert_eq!(rough_token_count("Hello there, general"), 5);
        // Once built, counts are o200k_base's ("Hello there" is two tokens).
        assert!(load_tokenizer());
        assert_eq!(count_tokens("Hello there"), 2);
    }

    #[test]
    fn a_long_stream_without_usage_is_estimated_from_all_its_text_holding_little_of_it() {
        assert!(load_tokenizer());
        // Issue 16: the kept chunks are read into text as the stream goes, not held to its end.
        let events: String = (0..3000)
            .map(|i| format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}}}}],\"usage\":null}}\r\n\r\n"))
            .chain([DONE.to_owned()])
            .collect();
        assert!(events.len() > 10 * STREAM_TEXT_AT);
        let expected = count_tokens(&stream_text(events.as_bytes()));
        assert!(expected > 3000);
        for size in [1, 7, 97, 4096, STREAM_TEXT_AT + 3] {
            let mut reader = UsageReader::new("v1/chat/completions", Bytes::new(), false);
            assert!(reader.begin(200, true));
            let mut most_kept = 0;
            for piece in events.as_bytes().chunks(size) {
                reader.chunk(Bytes::copy_from_slice(piece), Duration::ZERO);
                most_kept = most_kept.max(reader.kept_len);
            }
            assert!(most_kept < STREAM_TEXT_AT + size, "{size}: {most_kept}");
            let usage = reader.finish().unwrap();
            assert!(usage.estimated);
            assert_eq!(usage.completion, expected, "chunks of {size}");
        }
    }

    #[test]
    fn a_request_that_got_no_answer_has_no_usage() {
        let request = r#"{"model":"m","prompt":"Hello there"}"#;
        let mut reader = UsageReader::new("v1/completions", Bytes::from(request), false);
        assert_eq!(reader.finish(), None);
        assert!(!reader.begin(502, false));
        assert_eq!(reader.finish(), None);
    }
}
