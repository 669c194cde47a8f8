//! Admission: who is calling (the client key), may they (model, operation), and do the limits
//! let them through. Every limit that applies must pass, all or nothing (a refused request uses
//! nothing). The limits, in the order they are gathered (the order only decides which one the
//! decision trace names when several are equally tight):
//!
//! 1. the key's `max_concurrent_requests`;
//! 2. the key's `requests_per_minute`, `requests_per_hour`, `requests_per_day`;
//! 3. the key's `tokens_per_minute`, `tokens_per_day`, `monthly_token_budget`;
//! 4. every quota policy whose path and model patterns match, in file-name then file order, on the
//!    owner's counter (`enforce_per_user`, the default) or one global counter; when the owner
//!    has active overrides for the policy's (path, model), those replace it: `exempt` skips it,
//!    otherwise each override's own limit applies on the owner's counter.
//!
//! A refusal names the limit that needs the longest wait (`retry_after`): the request fits only
//! once all do. Tokens are reserved with the caller's estimate (capped at each limit, so that a
//! large request can pass a full bucket) and settled from real usage by the record stage.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use futures_util::future::BoxFuture;
use smallvec::SmallVec;

use super::admin::AdminToken;
use super::database::UsageSink;
use super::key::{KeyDigest, KeyEntry};
use super::limits::{openai_duration, Measure, Reading, Rule, Window};
use super::store::{Acquired, Adjustment, Charge, CounterKey, CounterStore, KeyLimit, StoreError};
use super::table::{AccessSnapshot, AccessTable};
use super::AccessMode;

/// A request header carrying the admin token on a proxied request: the answer then carries the
/// decision trace. It never goes upstream (proxy::headers drops it with the other credentials).
pub const ADMIN_TRACE_HEADER: &str = "x-llmux-admin-token";
/// The decision trace's answer header.
pub const DECISION_HEADER: &str = "x-llmux-quota-decision";

/// What the pipeline knows when it asks.
pub struct AdmitRequest<'a> {
    /// The operation's name (`chat`, `embeddings`, ...), as keys' `allowed_operations` list them.
    pub operation: &'a str,
    /// The request path, normalised (`/v1/chat/completions`).
    pub path: &'a str,
    /// The request method (`POST`): with the path, what protected endpoints name.
    pub method: &'a str,
    /// The model asked for, when the operation names one.
    pub model: Option<&'a str>,
    /// Tokens the request may use (input size + `max_tokens`); called only when a token limit applies.
    pub token_estimate: &'a dyn Fn() -> u64,
}

/// Why a request is refused. The API layer renders each as an OpenAI error.
#[derive(Debug)]
pub enum Denial {
    /// No key presented (401 `invalid_api_key`).
    MissingKey,
    /// A key nobody configured (401 `invalid_api_key`).
    UnknownKey,
    /// 401, saying the key expired.
    KeyExpired,
    /// 401, saying the key is disabled.
    KeyDisabled,
    /// The key may not use this model: the same 404 as a model that does not exist.
    ModelNotAllowed,
    /// The key may not call this operation.
    OperationNotAllowed,
    /// Over a limit (429 `rate_limit_exceeded` + Retry-After).
    RateLimited(Box<Refusal>),
    /// The limit store could not be asked: refused rather than let through unlimited (503).
    StoreUnavailable(StoreError),
}

/// A 429's details.
#[derive(Debug)]
pub struct Refusal {
    pub retry_after: Duration,
    /// The limit that needs the longest wait (`requests_per_minute`, `request_limit`, ...).
    pub limit_name: &'static str,
    pub headers: RateLimitHeaders,
    pub trace: Option<DecisionTrace>,
}

/// A refused request: why, and who (when the key was recognised), for the log line and metrics.
#[derive(Debug)]
pub struct Rejection {
    pub denial: Denial,
    pub caller: Option<Caller>,
}

impl Rejection {
    fn anonymous(denial: Denial) -> Self {
        Self {
            denial,
            caller: None,
        }
    }
}

impl Denial {
    /// A short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingKey | Self::UnknownKey => "invalid_api_key",
            Self::KeyExpired => "expired",
            Self::KeyDisabled => "disabled",
            Self::ModelNotAllowed => "model",
            Self::OperationNotAllowed => "operation",
            Self::RateLimited(_) => "rate_limited",
            Self::StoreUnavailable(_) => "store_unavailable",
        }
    }
}

/// Who is calling, for the log line and metrics: the key's entry (its `name`, `owner` and
/// `metric_label`; never the key). One `Arc`: the record gets a clone of it per request.
#[derive(Debug, Clone)]
pub struct Caller(Arc<KeyEntry>);

impl Caller {
    fn of(entry: &Arc<KeyEntry>) -> Self {
        Self(Arc::clone(entry))
    }
}

impl std::ops::Deref for Caller {
    type Target = KeyEntry;

    fn deref(&self) -> &KeyEntry {
        &self.0
    }
}

/// A recognised key, for decisions that are not admissions (which models it may see).
#[derive(Debug, Clone)]
pub struct KeyView(Arc<KeyEntry>);

impl KeyView {
    /// A caller proven another way (an OIDC token on /v1).
    pub fn of(entry: Arc<KeyEntry>) -> Self {
        Self(entry)
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.0.may_use_model(model)
    }

    pub fn caller(&self) -> Caller {
        Caller::of(&self.0)
    }
}

/// The entry of the key `headers` present.
fn identify_key<'s>(
    snapshot: &'s AccessSnapshot,
    headers: &HeaderMap,
) -> Result<&'s Arc<KeyEntry>, Denial> {
    let key = presented_key(headers).ok_or(Denial::MissingKey)?;
    snapshot.key(&KeyDigest::of(key)).ok_or(Denial::UnknownKey)
}

/// The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` values: the tightest request
/// limit and the tightest token limit that applied (none when no such limit applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    pub requests: Option<Reading>,
    pub tokens: Option<Reading>,
}

impl RateLimitHeaders {
    /// Header names and values, OpenAI's way (`x-ratelimit-reset-requests: 6m0s`).
    pub fn pairs(&self) -> SmallVec<[(&'static str, String); 6]> {
        let mut pairs = SmallVec::new();
        if let Some(reading) = self.requests {
            pairs.push(("x-ratelimit-limit-requests", reading.limit.to_string()));
            pairs.push((
                "x-ratelimit-remaining-requests",
                reading.remaining.to_string(),
            ));
            pairs.push(("x-ratelimit-reset-requests", openai_duration(reading.reset)));
        }
        if let Some(reading) = self.tokens {
            pairs.push(("x-ratelimit-limit-tokens", reading.limit.to_string()));
            pairs.push((
                "x-ratelimit-remaining-tokens",
                reading.remaining.to_string(),
            ));
            pairs.push(("x-ratelimit-reset-tokens", openai_duration(reading.reset)));
        }
        pairs
    }
}

/// Which kind of limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceSource {
    /// No limit applied.
    None,
    /// One of the key's own limits.
    Key,
    Policy,
    Override,
    /// An exempt override skipped a policy and no other limit applied.
    OverrideExempt,
}

impl TraceSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Key => "key",
            Self::Policy => "policy",
            Self::Override => "override",
            Self::OverrideExempt => "override-exempt",
        }
    }
}

/// What decided, for the `x-llmux-quota-decision` header. Holds only the caller's own limits
/// and the policies' patterns: never an owner id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionTrace {
    pub allowed: bool,
    pub source: TraceSource,
    /// `requests_per_minute`, `request_limit`, ...
    pub limit_name: Option<&'static str>,
    pub window: Option<Window>,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub retry_after: Duration,
    /// For policies and overrides: their path and model patterns.
    pub api_path: Option<Arc<str>>,
    pub model: Option<Arc<str>>,
    /// `owner` or `global` for policies.
    pub bucket: Option<&'static str>,
    /// How many limits applied.
    pub checked: usize,
}

impl std::fmt::Display for DecisionTrace {
    /// `;`-joined `name=value` fields, empty ones left out (fast-openai-api-proxy's shape).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "source={};allowed={}", self.source.name(), self.allowed)?;
        if let Some(name) = self.limit_name {
            write!(f, ";limit_name={name}")?;
        }
        if let Some(window) = self.window {
            write!(f, ";window={}", window.name())?;
        }
        if let Some(limit) = self.limit {
            write!(f, ";limit={limit}")?;
        }
        if let Some(remaining) = self.remaining {
            write!(f, ";remaining={remaining}")?;
        }
        if let Some(api_path) = &self.api_path {
            write!(f, ";api_path={api_path}")?;
        }
        if let Some(model) = &self.model {
            write!(f, ";model={model}")?;
        }
        if let Some(bucket) = self.bucket {
            write!(f, ";bucket={bucket}")?;
        }
        write!(
            f,
            ";checked={};retry_after={}",
            self.checked,
            self.retry_after.as_secs_f64().ceil() as u64
        )
    }
}

/// An admitted request: who, the headers for its answer, and what it holds until it ends
/// (concurrency slots, token reservations). Kept in the request context until the record stage.
pub struct Admission {
    /// `None` when access control is off.
    pub caller: Option<Caller>,
    pub headers: RateLimitHeaders,
    /// Present when the answer should carry it (admin credential, or enabled server-wide).
    /// Boxed: most admissions have none, and the admission moves with the request.
    pub trace: Option<Box<DecisionTrace>>,
    held: Option<Held>,
    /// A database key's use, counted in the store when the request ends (not when refunded).
    usage: Option<UsageRecord>,
}

struct UsageRecord {
    sink: Arc<dyn UsageSink>,
    bucket: Arc<str>,
    /// The real usage once settled (input + output tokens).
    tokens: u64,
    refunded: bool,
}

struct Held {
    store: Arc<dyn CounterStore>,
    /// Every charge the request holds, in the charges' order (most requests have one or two).
    charges: SmallVec<[HeldCharge; 2]>,
}

/// One charge an admitted request holds until it ends: token reservations are settled, request
/// charges given back on a refund, concurrency slots released when it drops.
struct HeldCharge {
    counter: CounterKey,
    rule: Rule,
    measure: Measure,
    /// What the counter holds for this request now (tokens: the reservation, then the usage).
    charged: u64,
}

impl Held {
    /// Gives back every charge of `measure` (once: they are no longer held).
    fn release(&mut self, measure: Measure) {
        let adjustments: SmallVec<[Adjustment; 2]> = self
            .charges
            .iter()
            .filter(|charge| charge.measure == measure)
            .map(|charge| Adjustment {
                counter: charge.counter.clone(),
                rule: charge.rule,
                delta: -1,
            })
            .collect();
        if !adjustments.is_empty() {
            self.charges.retain(|charge| charge.measure != measure);
            self.store.adjust(unix_ms(SystemTime::now()), &adjustments);
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("caller", &self.caller)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// What a request gets when access control is off.
    pub fn open() -> Self {
        Self {
            caller: None,
            headers: RateLimitHeaders::default(),
            trace: None,
            held: None,
            usage: None,
        }
    }

    /// Whether any token limit applies (then the record stage should settle real usage).
    pub fn counts_tokens(&self) -> bool {
        self.held.as_ref().is_some_and(|held| {
            held.charges
                .iter()
                .any(|charge| charge.measure == Measure::Tokens)
        })
    }

    /// Settles the token counters to `used` (input + output), replacing the estimate. May be
    /// called again as a stream reports more.
    pub fn settle_tokens(&mut self, used: u64) {
        if let Some(usage) = &mut self.usage {
            usage.tokens = used;
        }
        let Some(held) = &mut self.held else { return };
        let adjustments: SmallVec<[Adjustment; 2]> = held
            .charges
            .iter_mut()
            .filter(|charge| charge.measure == Measure::Tokens && charge.charged != used)
            .map(|charge| {
                let delta = used as i64 - charge.charged as i64;
                charge.charged = used;
                Adjustment {
                    counter: charge.counter.clone(),
                    rule: charge.rule,
                    delta,
                }
            })
            .collect();
        // The clock is read only when a counter changes (most keys have no token limit).
        if !adjustments.is_empty() {
            held.store.adjust(unix_ms(SystemTime::now()), &adjustments);
        }
    }

    /// Gives back the request and its token reservation: llmux could not serve it (no upstream
    /// answered), so the client should not pay for it.
    pub fn refund(&mut self) {
        self.settle_tokens(0);
        if let Some(usage) = &mut self.usage {
            usage.refunded = true;
        }
        if let Some(held) = &mut self.held {
            held.release(Measure::Requests);
        }
    }
}

impl Drop for Admission {
    /// Releases the concurrency slots: when the answer's last byte went, or the client left.
    /// Counts a database key's request and tokens in the store (in memory; written in batches).
    fn drop(&mut self) {
        if let Some(usage) = self.usage.take().filter(|usage| !usage.refunded) {
            usage.sink.record(&usage.bucket, 1, usage.tokens);
        }
        if let Some(held) = &mut self.held {
            held.release(Measure::Concurrent);
        }
    }
}

/// The client key a request presents: `Authorization: Bearer KEY` (OpenAI SDKs) or `api-key`
/// (Azure SDKs). Read as `HeaderValue::to_str` and `str::trim` read it (a value that is not
/// text counts as absent), with ASCII byte tests: the values are checked as text a word at a
/// time (`swar::header_text`), and in visible ASCII the only spaces are `' '` and tabs, so
/// `trim_ascii` is `trim` and the scheme ends at the first `' '`. Through `to_str`, `trim`
/// and `split_once` it was about 0.8k instructions per admission (issue 16).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(header_text) {
        let value = value.trim_ascii();
        let space = value.bytes().position(|b| b == b' ')?;
        let (scheme, key) = (&value[..space], value[space + 1..].trim_ascii());
        return (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key);
    }
    static API_KEY: HeaderName = HeaderName::from_static("api-key");
    headers
        .get(&API_KEY)
        .and_then(header_text)
        .map(str::trim_ascii)
        .filter(|key| !key.is_empty())
}

/// A header value as text, when it is all visible ASCII (or tabs).
fn header_text(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    match crate::swar::header_text(bytes) {
        true => std::str::from_utf8(bytes).ok(),
        false => None,
    }
}

/// A decision on one request: made at once, or waiting on a shared counter store.
#[expect(
    clippy::large_enum_variant,
    reason = "made at once is the common case: boxing it would be an allocation per request"
)]
pub enum Decision<'a> {
    Made(Result<Admission, Rejection>),
    Waiting(BoxFuture<'a, Result<Admission, Rejection>>),
}

impl Decision<'_> {
    /// The decision, waiting for the store when it must.
    pub async fn outcome(self) -> Result<Admission, Rejection> {
        match self {
            Self::Made(decision) => decision,
            Self::Waiting(decision) => decision.await,
        }
    }
}

/// What admission knows before it asks the counters.
struct Plan {
    entry: Arc<KeyEntry>,
    charges: SmallVec<[Charge; 4]>,
    infos: SmallVec<[ChargeInfo; 4]>,
    exempted: bool,
    wants_trace: bool,
}

/// Access control as the server runs it: the mode, the key table, the counters, the admin token.
pub struct AccessControl {
    mode: AccessMode,
    table: Arc<AccessTable>,
    store: Arc<dyn CounterStore>,
    admin: Option<AdminToken>,
    /// `LLMUX_QUOTA_DECISION_TRACE=on`: every answer carries the trace.
    trace_all: bool,
    /// Where database keys' use is counted (the store), when there is one.
    usage: Option<Arc<dyn UsageSink>>,
}

/// What one limit is, beside its charge: for the headers and the trace.
#[derive(Debug, Clone)]
struct ChargeInfo {
    measure: Measure,
    source: TraceSource,
    limit_name: &'static str,
    window: Option<Window>,
    target: Option<(Arc<str>, Arc<str>)>,
    bucket: Option<&'static str>,
}

impl AccessControl {
    pub fn new(
        mode: AccessMode,
        table: Arc<AccessTable>,
        store: Arc<dyn CounterStore>,
        admin: Option<AdminToken>,
        trace_all: bool,
    ) -> Self {
        Self {
            mode,
            table,
            store,
            admin,
            trace_all,
            usage: None,
        }
    }

    /// Counts the use of keys that name a usage bucket (database keys) in `sink`.
    pub fn with_usage_sink(mut self, sink: Arc<dyn UsageSink>) -> Self {
        self.usage = Some(sink);
        self
    }

    pub fn table(&self) -> &Arc<AccessTable> {
        &self.table
    }

    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.admin.as_ref()
    }

    /// Whether requests need a key now: `on`, or `auto` once any key source (a key file; the
    /// admin API's database, which an admin credential turns on) put a section in the table.
    pub fn enabled(&self) -> bool {
        match self.mode {
            AccessMode::On => true,
            AccessMode::Off => false,
            AccessMode::Auto => self.table.ever_configured(),
        }
    }

    /// Whether any request may be refused now: access control is on, or some endpoint is
    /// protected while it is off. When not, admission has nothing to decide or settle.
    pub fn may_refuse(&self) -> bool {
        self.enabled() || self.table.protects_any()
    }

    fn wants_trace(&self, headers: &HeaderMap) -> bool {
        // The header is looked for only when there is an admin token, by its static name (a
        // `&str` name is parsed and hashed on every lookup).
        static ADMIN_TRACE: HeaderName = HeaderName::from_static(ADMIN_TRACE_HEADER);
        self.trace_all
            || self.admin.as_ref().is_some_and(|admin| {
                headers
                    .get(&ADMIN_TRACE)
                    .and_then(|value| value.to_str().ok())
                    .is_some_and(|value| admin.verify(value.trim()))
            })
    }

    /// Decides on one request. `now` is the wall clock (calendar windows are UTC). Made at
    /// once unless the counters are in a shared store: no future to build or move per request
    /// (an admission's charges and readings made its future 2 KB, copied at every await).
    pub fn admit(
        &self,
        headers: &HeaderMap,
        request: &AdmitRequest<'_>,
        now: SystemTime,
    ) -> Decision<'_> {
        // Off, only the protected endpoints (fast-openai-api-proxy's) need a key.
        if !self.enabled() && !self.table.protects(request.path, request.method) {
            return Decision::Made(Ok(Admission::open()));
        }
        let snapshot = self.table.snapshot();
        match identify_key(&snapshot, headers) {
            Ok(entry) => self.admit_key(headers, request, now, &snapshot, entry),
            Err(denial) => Decision::Made(Err(Rejection::anonymous(denial))),
        }
    }

    /// Decides on a request whose caller was proven another way (an OIDC token on /v1,
    /// `oidc::callers`): the same checks and limits as for a key entry.
    pub fn admit_entry(
        &self,
        headers: &HeaderMap,
        request: &AdmitRequest<'_>,
        now: SystemTime,
        entry: &Arc<KeyEntry>,
    ) -> Decision<'_> {
        if !self.enabled() {
            return Decision::Made(Ok(Admission::open()));
        }
        let snapshot = self.table.snapshot();
        self.admit_key(headers, request, now, &snapshot, entry)
    }

    /// The caller of a request that names no model (`GET /v1/models`): `Ok(None)` when access
    /// control is off; the key's entry otherwise, refused when missing, unknown, expired or disabled.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Option<KeyView>, Denial> {
        // Protecting `GET /v1/models` covers `/v1/models/{model}` too: both list models.
        if !self.enabled() && !self.table.protects("/v1/models", "GET") {
            return Ok(None);
        }
        let snapshot = self.table.snapshot();
        let entry = identify_key(&snapshot, headers)?;
        if entry.disabled {
            return Err(Denial::KeyDisabled);
        }
        if entry.is_expired((unix_ms(SystemTime::now()) / 1000) as i64) {
            return Err(Denial::KeyExpired);
        }
        Ok(Some(KeyView(Arc::clone(entry))))
    }

    fn admit_key(
        &self,
        headers: &HeaderMap,
        request: &AdmitRequest<'_>,
        now: SystemTime,
        snapshot: &AccessSnapshot,
        entry: &Arc<KeyEntry>,
    ) -> Decision<'_> {
        let now_ms = unix_ms(now);
        if let Err(denial) = may_call(entry, request, now_ms) {
            return Decision::Made(Err(Rejection {
                denial,
                caller: Some(Caller::of(entry)),
            }));
        }
        // Built here and filled in place: returned from a function, the plan (half a kilobyte
        // of charges) was copied on the way.
        let mut plan = Plan {
            entry: Arc::clone(entry),
            charges: SmallVec::new(),
            infos: SmallVec::new(),
            exempted: false,
            wants_trace: self.wants_trace(headers),
        };
        charges_for(snapshot, entry, request, now_ms, &mut plan);
        if plan.charges.is_empty() {
            return Decision::Made(Ok(self.unlimited(&plan)));
        }
        match self.store.acquire_at_once(now_ms, &plan.charges) {
            Some(acquired) => Decision::Made(self.settle_charges(&mut plan, acquired)),
            None => Decision::Waiting(Box::pin(async move {
                let acquired = self.store.acquire(now_ms, &plan.charges).await;
                self.settle_charges(&mut plan, acquired)
            })),
        }
    }

    /// The admission of a request no limit applies to.
    fn unlimited(&self, plan: &Plan) -> Admission {
        let trace = plan.wants_trace.then(|| {
            Box::new(DecisionTrace {
                allowed: true,
                source: if plan.exempted {
                    TraceSource::OverrideExempt
                } else {
                    TraceSource::None
                },
                limit_name: None,
                window: None,
                limit: None,
                remaining: None,
                retry_after: Duration::ZERO,
                api_path: None,
                model: None,
                bucket: None,
                checked: 0,
            })
        });
        Admission {
            usage: self.usage_record(&plan.entry),
            caller: Some(Caller::of(&plan.entry)),
            headers: RateLimitHeaders::default(),
            trace,
            held: None,
        }
    }

    /// The decision once the store applied the charges (all of them) or refused (none). Takes
    /// the plan's charges (by reference: moving the plan would copy them).
    fn settle_charges(
        &self,
        plan: &mut Plan,
        acquired: Result<Acquired, StoreError>,
    ) -> Result<Admission, Rejection> {
        let Plan {
            entry,
            charges,
            infos,
            wants_trace,
            ..
        } = plan;
        let (entry, wants_trace) = (Arc::clone(entry), *wants_trace);
        let acquired = match acquired {
            Ok(acquired) => acquired,
            Err(error) => {
                return Err(Rejection {
                    denial: Denial::StoreUnavailable(error),
                    caller: Some(Caller(entry)),
                })
            }
        };
        let headers_out = tightest(infos, &acquired.readings, acquired.admitted);
        let decisive = decisive_index(&acquired.readings, acquired.admitted);
        let trace = wants_trace.then(|| {
            let info = &infos[decisive];
            let reading = acquired.readings[decisive];
            DecisionTrace {
                allowed: acquired.admitted,
                source: info.source,
                limit_name: Some(info.limit_name),
                window: info.window,
                limit: Some(reading.limit),
                remaining: Some(reading.remaining),
                retry_after: reading.retry_after,
                api_path: info.target.as_ref().map(|(path, _)| Arc::clone(path)),
                model: info.target.as_ref().map(|(_, model)| Arc::clone(model)),
                bucket: info.bucket,
                checked: charges.len(),
            }
        });
        if !acquired.admitted {
            return Err(Rejection {
                denial: Denial::RateLimited(Box::new(Refusal {
                    retry_after: acquired.readings[decisive].retry_after,
                    limit_name: infos[decisive].limit_name,
                    headers: headers_out,
                    trace,
                })),
                caller: Some(Caller(entry)),
            });
        }
        let held = Held {
            store: Arc::clone(&self.store),
            charges: charges
                .drain(..)
                .zip(infos.iter())
                .map(|(charge, info)| HeldCharge {
                    counter: charge.counter,
                    rule: charge.rule,
                    measure: info.measure,
                    charged: charge.cost,
                })
                .collect(),
        };
        Ok(Admission {
            usage: self.usage_record(&entry),
            caller: Some(Caller(entry)),
            headers: headers_out,
            trace: trace.map(Box::new),
            held: Some(held),
        })
    }
}

/// The checks that need no counter: the key is usable, and for this model and operation.
fn may_call(entry: &KeyEntry, request: &AdmitRequest<'_>, now_ms: u64) -> Result<(), Denial> {
    if entry.disabled {
        return Err(Denial::KeyDisabled);
    }
    if entry.is_expired((now_ms / 1000) as i64) {
        return Err(Denial::KeyExpired);
    }
    if let Some(model) = request.model {
        if !entry.may_use_model(model) {
            return Err(Denial::ModelNotAllowed);
        }
    }
    if !entry.may_do(request.operation) {
        return Err(Denial::OperationNotAllowed);
    }
    Ok(())
}

impl AccessControl {
    fn usage_record(&self, entry: &KeyEntry) -> Option<UsageRecord> {
        Some(UsageRecord {
            sink: Arc::clone(self.usage.as_ref()?),
            bucket: Arc::clone(entry.usage_bucket.as_ref()?),
            tokens: 0,
            refunded: false,
        })
    }
}

/// Every limit that applies to this request, in the documented order, into `plan` (written in
/// place: the charges and their infos are half a kilobyte, copied at every move).
fn charges_for(
    snapshot: &AccessSnapshot,
    entry: &KeyEntry,
    request: &AdmitRequest<'_>,
    now_ms: u64,
    plan: &mut Plan,
) {
    let Plan {
        charges,
        infos,
        exempted,
        ..
    } = plan;
    let mut estimate: Option<u64> = None;
    let mut tokens = |limit: u64| {
        let estimate = *estimate.get_or_insert_with(|| (request.token_estimate)());
        estimate.min(limit)
    };
    let limits = &entry.limits;
    let key_limits: [(Option<u64>, KeyLimit, Measure, Option<Window>); 7] = [
        (
            limits.max_concurrent_requests,
            KeyLimit::MaxConcurrentRequests,
            Measure::Concurrent,
            None,
        ),
        (
            limits.requests_per_minute,
            KeyLimit::RequestsPerMinute,
            Measure::Requests,
            Some(Window::Minute),
        ),
        (
            limits.requests_per_hour,
            KeyLimit::RequestsPerHour,
            Measure::Requests,
            Some(Window::Hour),
        ),
        (
            limits.requests_per_day,
            KeyLimit::RequestsPerDay,
            Measure::Requests,
            Some(Window::Day),
        ),
        (
            limits.tokens_per_minute,
            KeyLimit::TokensPerMinute,
            Measure::Tokens,
            Some(Window::Minute),
        ),
        (
            limits.tokens_per_day,
            KeyLimit::TokensPerDay,
            Measure::Tokens,
            Some(Window::Day),
        ),
        (
            limits.monthly_token_budget,
            KeyLimit::MonthlyTokenBudget,
            Measure::Tokens,
            Some(Window::Month),
        ),
    ];
    for (limit, name, measure, window) in key_limits {
        let Some(limit) = limit else { continue };
        let (rule, cost) = match (measure, window) {
            (Measure::Concurrent, _) | (_, None) => (Rule::Concurrent { limit }, 1),
            (Measure::Requests, Some(window)) => (Rule::windowed(limit, window), 1),
            (Measure::Tokens, Some(window)) => (Rule::windowed(limit, window), tokens(limit)),
        };
        charges.push(Charge {
            counter: CounterKey::Key {
                digest: entry.digest,
                limit: name,
            },
            rule,
            cost,
        });
        infos.push(ChargeInfo {
            measure,
            source: TraceSource::Key,
            limit_name: name.name(),
            window,
            target: None,
            bucket: None,
        });
    }

    let now_seconds = (now_ms / 1000) as i64;
    // Several policies may share a (path, model) (a minute and a day one): their overrides apply once.
    let mut overridden: SmallVec<[(Arc<str>, Arc<str>); 2]> = SmallVec::new();
    for policy in &snapshot.policies {
        if !policy.applies(request.path, request.model) {
            continue;
        }
        let mut active = snapshot
            .overrides_of(&entry.owner, policy)
            .filter(|o| o.is_active(now_seconds))
            .peekable();
        if active.peek().is_some() {
            let target = (Arc::clone(&policy.api_path), Arc::clone(&policy.model));
            if overridden.contains(&target) {
                continue;
            }
            overridden.push(target.clone());
            for entry_override in active {
                if entry_override.exempt {
                    *exempted = true;
                    continue;
                }
                let measures = [
                    (
                        entry_override.request_limit,
                        Measure::Requests,
                        "request_limit",
                    ),
                    (entry_override.token_limit, Measure::Tokens, "token_limit"),
                ];
                for (limit, measure, limit_name) in measures {
                    let Some(limit) = limit else { continue };
                    let cost = if measure == Measure::Tokens {
                        tokens(limit)
                    } else {
                        1
                    };
                    charges.push(Charge {
                        counter: CounterKey::Quota {
                            rule: Arc::clone(&entry_override.id),
                            measure,
                            owner: Some(Arc::clone(&entry.owner)),
                        },
                        rule: Rule::windowed(limit, entry_override.window),
                        cost,
                    });
                    infos.push(ChargeInfo {
                        measure,
                        source: TraceSource::Override,
                        limit_name,
                        window: Some(entry_override.window),
                        target: Some(target.clone()),
                        bucket: Some("owner"),
                    });
                }
            }
            continue;
        }
        let measures = [
            (policy.request_limit, Measure::Requests, "request_limit"),
            (policy.token_limit, Measure::Tokens, "token_limit"),
        ];
        for (limit, measure, limit_name) in measures {
            let Some(limit) = limit else { continue };
            let cost = if measure == Measure::Tokens {
                tokens(limit)
            } else {
                1
            };
            charges.push(Charge {
                counter: CounterKey::Quota {
                    rule: Arc::clone(&policy.id),
                    measure,
                    owner: policy.per_owner.then(|| Arc::clone(&entry.owner)),
                },
                rule: Rule::windowed(limit, policy.window),
                cost,
            });
            infos.push(ChargeInfo {
                measure,
                source: TraceSource::Policy,
                limit_name,
                window: Some(policy.window),
                target: Some((Arc::clone(&policy.api_path), Arc::clone(&policy.model))),
                bucket: Some(if policy.per_owner { "owner" } else { "global" }),
            });
        }
    }
}

/// The reading to show per measure: the refusing one when refused, else the least remaining.
fn tightest(infos: &[ChargeInfo], readings: &[Reading], admitted: bool) -> RateLimitHeaders {
    let pick = |measure: Measure| {
        infos
            .iter()
            .zip(readings)
            .filter(|(info, _)| info.measure == measure)
            .map(|(_, reading)| *reading)
            .min_by_key(|reading| {
                (
                    // A refusing limit first, the longest wait first.
                    admitted || reading.retry_after.is_zero(),
                    std::cmp::Reverse(reading.retry_after),
                    reading.remaining,
                    std::cmp::Reverse(reading.reset),
                )
            })
    };
    RateLimitHeaders {
        requests: pick(Measure::Requests),
        tokens: pick(Measure::Tokens),
    }
}

/// The limit the trace names: the refusal with the longest wait, else the least remaining
/// (relative to its limit), earlier ones first.
fn decisive_index(readings: &[Reading], admitted: bool) -> usize {
    if !admitted {
        return readings
            .iter()
            .enumerate()
            .max_by_key(|(i, r)| (r.retry_after, std::cmp::Reverse(*i)))
            .map_or(0, |(i, _)| i);
    }
    readings
        .iter()
        .enumerate()
        .min_by(|(i, a), (j, b)| {
            let share = |r: &Reading| r.remaining as f64 / r.limit.max(1) as f64;
            share(a).total_cmp(&share(b)).then(i.cmp(j))
        })
        .map_or(0, |(i, _)| i)
}

/// The most output tokens a JSON request body allows (`max_tokens`, `max_completion_tokens` or
/// `max_output_tokens`), for the token estimate. Reads only those members.
pub fn max_output_tokens(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Limits {
        max_tokens: Option<u64>,
        max_completion_tokens: Option<u64>,
        max_output_tokens: Option<u64>,
    }
    let limits: Limits = serde_json::from_slice(body).ok()?;
    [
        limits.max_tokens,
        limits.max_completion_tokens,
        limits.max_output_tokens,
    ]
    .into_iter()
    .flatten()
    .max()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;
    use crate::access::file::{parse_section, SectionLoad};
    use crate::access::store::MemoryStore;

    /// 2026-12-01T10:00:00Z.
    const NOW_MS: u64 = 1_796_119_200_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    fn digest(key: &str) -> String {
        KeyDigest::of(key).to_hex()
    }

    /// An access control over one key file's `llmux_access` section (JSON text).
    fn control(section: &str, mode: AccessMode) -> AccessControl {
        let text = format!("{{\"llmux_access\": {section}}}");
        let parsed = parse_section(Path::new("keys.json"), &text);
        let table = Arc::new(AccessTable::new());
        match parsed.load {
            SectionLoad::Loaded(section) => {
                table.replace_file(Path::new("keys.json"), section).unwrap()
            }
            SectionLoad::Absent => {}
            SectionLoad::Failed => panic!("{:?}", parsed.problems),
        }
        AccessControl::new(
            mode,
            table,
            Arc::new(MemoryStore::new()),
            Some(AdminToken::new("admin-secret")),
            false,
        )
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        headers
    }

    fn chat(model: &str) -> AdmitRequest<'_> {
        AdmitRequest {
            operation: "chat",
            path: "/v1/chat/completions",
            method: "POST",
            model: Some(model),
            token_estimate: &|| 100,
        }
    }

    fn admit(
        control: &AccessControl,
        headers: &HeaderMap,
        request: &AdmitRequest<'_>,
    ) -> Result<Admission, Denial> {
        futures_util::FutureExt::now_or_never(control.admit(headers, request, now()).outcome())
            .expect("the memory store answers at once")
            .map_err(|rejection| rejection.denial)
    }

    fn keys(entries: &str) -> String {
        format!("{{\"keys\": [{entries}]}}")
    }

    #[test]
    fn keys_are_read_from_bearer_or_api_key_headers() {
        let check = |name: &str, value: &str, expected: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            assert_eq!(presented_key(&headers), expected, "{name}: {value}");
        };
        check("authorization", "Bearer llmux_a", Some("llmux_a"));
        check("authorization", "bearer  llmux_a ", Some("llmux_a"));
        check("authorization", "Basic abc", None);
        check("authorization", "Bearer ", None);
        check("api-key", "llmux_b", Some("llmux_b"));
        check("x-api-key", "llmux_c", None);
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }

    /// What `presented_key` was before its byte tests (issue 16): `to_str`, `trim`, `split_once`.
    fn presented_key_through_str(headers: &HeaderMap) -> Option<&str> {
        if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            let (scheme, key) = value.trim().split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| key.trim())
                .filter(|key| !key.is_empty());
        }
        headers
            .get("api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|key| !key.is_empty())
    }

    #[test]
    fn keys_are_read_as_text_exactly_as_through_str() {
        let values: &[&[u8]] = &[
            b"Bearer llmux_a",
            b"\tBearer llmux_a\t",
            b"Bearer\tllmux_a",
            b"Bearer \tllmux_a \t ",
            b"BEARER llmux_a",
            b"Bearer  ",
            b"Bearer",
            b"  Bearer x y ",
            b"Token llmux_a",
            b"Bearer llmux_\xc3\xa9",
            b"Bearer llmux_\x80a",
            b"",
            b"   ",
            b"llmux_plain",
        ];
        for authorization in values.iter().map(Some).chain([None]) {
            for api_key in values.iter().map(Some).chain([None]) {
                let mut headers = HeaderMap::new();
                if let Some(value) = authorization {
                    headers.insert(AUTHORIZATION, HeaderValue::from_bytes(value).unwrap());
                }
                if let Some(value) = api_key {
                    headers.insert(
                        HeaderName::from_static("api-key"),
                        HeaderValue::from_bytes(value).unwrap(),
                    );
                }
                assert_eq!(
                    presented_key(&headers),
                    presented_key_through_str(&headers),
                    "{authorization:?} {api_key:?}"
                );
            }
        }
    }

    #[test]
    fn off_and_unconfigured_auto_let_everyone_through() {
        let off = control(&keys(""), AccessMode::Off);
        let admission = admit(&off, &HeaderMap::new(), &chat("m")).unwrap();
        assert!(admission.caller.is_none());
        let mut auto = control(&keys(""), AccessMode::Auto);
        auto.table = Arc::new(AccessTable::new());
        assert!(admit(&auto, &HeaderMap::new(), &chat("m")).is_ok());
        let on = control(&keys(""), AccessMode::On);
        assert!(matches!(
            admit(&on, &HeaderMap::new(), &chat("m")),
            Err(Denial::MissingKey)
        ));
    }

    #[test]
    fn each_key_problem_has_its_own_denial() {
        let file = keys(&format!(
            r#"{{"name": "ok", "owner_id": "alice", "key_sha256": "{}", "allowed_models": ["openai/*"], "allowed_operations": ["chat"]}},
               {{"name": "off", "key_sha256": "{}", "disabled": true}},
               {{"name": "old", "key_sha256": "{}", "expires_at": "2026-12-01T09:59:59Z"}}"#,
            digest("k-ok"),
            digest("k-off"),
            digest("k-old")
        ));
        let control = control(&file, AccessMode::Auto);
        let check = |key: &str, request: &AdmitRequest<'_>, expected: &str| {
            let outcome = admit(&control, &bearer(key), request);
            let got = match &outcome {
                Ok(_) => "ok".to_owned(),
                Err(denial) => format!("{denial:?}"),
            };
            assert!(got.starts_with(expected), "{key}: {got}");
        };
        check("k-ok", &chat("openai/gpt-4o"), "ok");
        check("k-nope", &chat("openai/gpt-4o"), "UnknownKey");
        check("k-off", &chat("openai/gpt-4o"), "KeyDisabled");
        check("k-old", &chat("openai/gpt-4o"), "KeyExpired");
        check("k-ok", &chat("llama"), "ModelNotAllowed");
        let embeddings = AdmitRequest {
            operation: "embeddings",
            path: "/v1/embeddings",
            method: "POST",
            model: Some("openai/e"),
            token_estimate: &|| 0,
        };
        check("k-ok", &embeddings, "OperationNotAllowed");
        let admission = admit(&control, &bearer("k-ok"), &chat("openai/x")).unwrap();
        let caller = admission.caller.as_ref().unwrap();
        assert_eq!((&*caller.name, &*caller.owner), ("ok", "alice"));
    }

    #[test]
    fn a_minute_limit_refuses_with_retry_after_and_headers() {
        let file = keys(&format!(
            r#"{{"name": "k", "key_sha256": "{}", "requests_per_minute": 2, "tokens_per_minute": 1000}}"#,
            digest("k")
        ));
        let control = control(&file, AccessMode::On);
        let first = admit(&control, &bearer("k"), &chat("m")).unwrap();
        let pairs = first.headers.pairs();
        let value = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value("x-ratelimit-limit-requests").as_deref(), Some("2"));
        assert_eq!(
            value("x-ratelimit-remaining-requests").as_deref(),
            Some("1")
        );
        assert_eq!(value("x-ratelimit-reset-requests").as_deref(), Some("30s"));
        assert_eq!(
            value("x-ratelimit-remaining-tokens").as_deref(),
            Some("900")
        );
        assert_eq!(value("x-ratelimit-reset-tokens").as_deref(), Some("6s"));
        admit(&control, &bearer("k"), &chat("m")).unwrap();
        let Err(Denial::RateLimited(refusal)) = admit(&control, &bearer("k"), &chat("m")) else {
            panic!("the third request in a minute is refused")
        };
        assert_eq!(refusal.retry_after, Duration::from_secs(30));
        assert_eq!(refusal.headers.requests.unwrap().remaining, 0);
        assert!(refusal.trace.is_none(), "no trace unless asked by an admin");
    }

    #[test]
    fn tokens_are_reserved_then_settled_from_real_usage() {
        let file = keys(&format!(
            r#"{{"name": "k", "key_sha256": "{}", "tokens_per_day": 1000}}"#,
            digest("k")
        ));
        let control = control(&file, AccessMode::On);
        let big = AdmitRequest {
            token_estimate: &|| 600,
            ..chat("m")
        };
        let mut first = admit(&control, &bearer("k"), &big).unwrap();
        assert_eq!(first.headers.tokens.unwrap().remaining, 400);
        assert!(first.counts_tokens());
        // Reserved 600, used 100: 900 left, so a second 600 fits.
        first.settle_tokens(100);
        let mut second = admit(&control, &bearer("k"), &big).unwrap();
        assert_eq!(second.headers.tokens.unwrap().remaining, 300);
        // The second used more than it reserved: 1000 used, nothing left.
        second.settle_tokens(900);
        assert!(matches!(
            admit(&control, &bearer("k"), &big),
            Err(Denial::RateLimited(_))
        ));
        second.refund();
        assert!(admit(&control, &bearer("k"), &big).is_ok());
    }

    #[test]
    fn concurrency_slots_are_released_when_the_admission_drops() {
        let file = keys(&format!(
            r#"{{"name": "k", "key_sha256": "{}", "max_concurrent_requests": 1}}"#,
            digest("k")
        ));
        let control = control(&file, AccessMode::On);
        let first = admit(&control, &bearer("k"), &chat("m")).unwrap();
        assert!(matches!(
            admit(&control, &bearer("k"), &chat("m")),
            Err(Denial::RateLimited(_))
        ));
        drop(first);
        assert!(admit(&control, &bearer("k"), &chat("m")).is_ok());
    }

    #[test]
    fn policies_apply_per_owner_or_globally_and_overrides_replace_them() {
        let file = format!(
            r#"{{"keys": [
                {{"name": "a", "owner_id": "alice", "key_sha256": "{}"}},
                {{"name": "b", "owner_id": "bob", "key_sha256": "{}"}},
                {{"name": "c", "owner_id": "carol", "key_sha256": "{}"}}],
              "quota_policies": [
                {{"api_path": "/v1/chat/completions", "model": "gpt-*", "window_type": "minute", "request_limit": 3}},
                {{"api_path": "/v1/embeddings", "window_type": "day", "request_limit": 1, "enforce_per_user": false}}],
              "quota_overrides": [
                {{"api_path": "/v1/chat/completions", "model": "gpt-*", "owner_id": "alice", "window_type": "minute", "request_limit": 1}},
                {{"api_path": "/v1/chat/completions", "model": "gpt-*", "owner_id": "carol", "window_type": "minute", "exempt": true}}]}}"#,
            digest("ka"),
            digest("kb"),
            digest("kc")
        );
        let control = control(&file, AccessMode::On);
        let run = |key: &str, request: &AdmitRequest<'_>, times: usize| -> usize {
            (0..times)
                .filter(|_| admit(&control, &bearer(key), request).is_ok())
                .count()
        };
        assert_eq!(run("ka", &chat("gpt-4o"), 5), 1, "alice's own limit");
        assert_eq!(run("kb", &chat("gpt-4o"), 5), 3, "the policy, per owner");
        assert_eq!(run("kc", &chat("gpt-4o"), 5), 5, "carol is exempt");
        assert_eq!(run("kb", &chat("llama"), 5), 5, "no policy for this model");
        let embeddings = AdmitRequest {
            operation: "embeddings",
            path: "/v1/embeddings",
            method: "POST",
            model: Some("e"),
            token_estimate: &|| 0,
        };
        assert_eq!(run("ka", &embeddings, 1), 1);
        assert_eq!(run("kb", &embeddings, 1), 0, "a global policy is shared");
    }

    #[test]
    fn the_trace_is_only_for_admins_or_when_enabled_and_names_no_owner() {
        let file = format!(
            r#"{{"keys": [{{"name": "a", "owner_id": "alice", "key_sha256": "{}"}}],
              "quota_policies": [{{"api_path": "/v1/*", "window_type": "hour", "request_limit": 1}}]}}"#,
            digest("ka")
        );
        let mut control = control(&file, AccessMode::On);
        let mut headers = bearer("ka");
        headers.insert(
            HeaderName::from_static(ADMIN_TRACE_HEADER),
            HeaderValue::from_static("wrong"),
        );
        assert!(admit(&control, &headers, &chat("m"))
            .unwrap()
            .trace
            .is_none());
        headers.insert(
            HeaderName::from_static(ADMIN_TRACE_HEADER),
            HeaderValue::from_static("admin-secret"),
        );
        let Err(Denial::RateLimited(refusal)) = admit(&control, &headers, &chat("m")) else {
            panic!("one per hour")
        };
        let trace = refusal.trace.unwrap().to_string();
        assert!(
            trace.starts_with("source=policy;allowed=false;limit_name=request_limit;window=hour;limit=1;remaining=0;api_path=/v1/*;model=*;bucket=owner;checked=1;retry_after="),
            "{trace}"
        );
        assert!(!trace.contains("alice"));
        control.trace_all = true;
        assert!(admit(&control, &bearer("ka"), &chat("m"))
            .unwrap_err()
            .is_rate_limited_with_trace());
    }

    impl Denial {
        fn is_rate_limited_with_trace(&self) -> bool {
            matches!(self, Denial::RateLimited(r) if r.trace.is_some())
        }
    }

    #[test]
    fn output_limits_are_read_from_any_of_their_names() {
        let check = |body: &str, expected: Option<u64>| {
            assert_eq!(max_output_tokens(body.as_bytes()), expected, "{body}");
        };
        check(r#"{"model":"m","max_tokens":50,"messages":[]}"#, Some(50));
        check(r#"{"max_completion_tokens":7}"#, Some(7));
        check(r#"{"input":"x","max_output_tokens":9}"#, Some(9));
        check(r#"{"model":"m"}"#, None);
        check("not json", None);
    }

    #[test]
    fn a_rejection_names_the_recognised_caller_only() {
        let file = keys(&format!(
            r#"{{"name": "off", "owner_id": "o", "key_sha256": "{}", "disabled": true}}"#,
            digest("k-off")
        ));
        let control = control(&file, AccessMode::On);
        let rejection = |key: &str| {
            futures_util::FutureExt::now_or_never(
                control.admit(&bearer(key), &chat("m"), now()).outcome(),
            )
            .unwrap()
            .unwrap_err()
        };
        let known = rejection("k-off");
        assert!(matches!(known.denial, Denial::KeyDisabled));
        assert_eq!(
            known.caller.map(|c| c.name.to_string()).as_deref(),
            Some("off")
        );
        assert!(rejection("k-unknown").caller.is_none());
    }

    #[test]
    fn an_override_may_use_its_own_window_and_token_limits_apply_too() {
        let file = format!(
            r#"{{"keys": [{{"name": "a", "owner_id": "alice", "key_sha256": "{}"}}],
              "quota_policies": [{{"api_path": "/v1/chat/completions", "window_type": "minute", "request_limit": 1, "token_limit": 1000}}],
              "quota_overrides": [{{"api_path": "/v1/chat/completions", "owner_id": "alice", "window_type": "day", "request_limit": 3}}]}}"#,
            digest("ka")
        );
        let control = control(&file, AccessMode::On);
        let admitted = (0..5)
            .filter(|_| admit(&control, &bearer("ka"), &chat("m")).is_ok())
            .count();
        assert_eq!(
            admitted, 3,
            "the override's 3 a day replace the policy's 1 a minute"
        );
    }
}
