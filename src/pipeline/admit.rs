//! admit: the one place that decides whether a caller may make a request, run once the model and
//! the caller are known (after identify, before route). Client keys (`Authorization: Bearer` /
//! `api-key` in `AdmitRequest::headers`), allowed models and operations and every limit are
//! decided by `access::admit::AccessControl`; this stage maps its answers to `ApiError`s, puts
//! the rate-limit headers (and the decision trace) where the accept middleware adds them to the
//! answer, and counts per-key metrics. The `Admission` it returns travels in the request's
//! record until the record is written: `settle` gets the real token usage the usage tap read
//! (or gives the request back when no upstream answered), and dropping it releases concurrency
//! slots.
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write;
use std::sync::Arc;
use std::time::SystemTime;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{web, HttpMessage, HttpRequest};
use bytes::BytesMut;

use super::operation::Operation;
use super::record::{AccessLog, Outcome};
use crate::access::admin::bearer;
use crate::access::admit::{
    self as access_admit, max_output_tokens, AccessControl, Decision, DecisionTrace, Denial,
    KeyView, RateLimitHeaders, Rejection, DECISION_HEADER,
};
use crate::access::key::KeyEntry;
use crate::access::limits::write_openai_duration;
use crate::access::metrics::{AccessMetrics, KeyCounters};
use crate::errors::ApiError;
use crate::oidc::callers::OidcCallers;
use crate::proxy::usage::{count_tokens, request_text, Usage};

/// Who decides admissions: built once, shared by every worker (`AppState::admitter`).
pub struct Admitter {
    access: Arc<AccessControl>,
    metrics: AccessMetrics,
    /// `--oidc-v1`: OIDC bearer tokens identify callers too.
    oidc: Option<OidcCallers>,
}

/// What admission knows about a request.
#[derive(Debug, Clone, Copy)]
pub struct AdmitRequest<'a> {
    pub operation: Operation,
    /// The exposed model the request names.
    pub model: &'a str,
    /// The client's request headers (its credentials are here; they never go upstream).
    pub headers: &'a HeaderMap,
    /// The JSON body (empty for uploads and calls without a body), for token estimates.
    pub body: &'a [u8],
}

impl AdmitRequest<'_> {
    /// The prompt tokens the request will cost, estimated with o200k_base from its text. Not
    /// free (it tokenizes the prompt): call it only when a rule needs it.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        match self.operation.counts_tokens() {
            true => count_tokens(&request_text(self.body)),
            false => 0,
        }
    }

    /// The tokens reserved before the request: a quarter of the body's bytes (a cheap upper
    /// bound of its prompt; the real usage replaces it) plus the output the body allows.
    pub fn token_reservation(&self) -> u64 {
        let input = self.body.len() as u64 / 4;
        input + max_output_tokens(self.body).unwrap_or(0)
    }
}

/// Headers the accept middleware adds to the request's answer: the rate-limit headers of the
/// tightest limits and, for admins, the decision trace. Kept as the readings until the
/// middleware writes them (`add_to`).
#[derive(Debug, Clone, Default)]
pub struct AnswerHeaders {
    limits: RateLimitHeaders,
    trace: Option<HeaderValue>,
}

impl AnswerHeaders {
    fn of(limits: &RateLimitHeaders, trace: Option<&DecisionTrace>) -> Self {
        Self {
            limits: *limits,
            trace: trace.and_then(|trace| HeaderValue::from_str(&trace.to_string()).ok()),
        }
    }

    /// Adds the headers to an answer's. Straight from the readings (static names, values cut
    /// from one per-thread buffer, or cloned when the last value of their header was for the
    /// same number): built as `(&str, String)` pairs and parsed back, then as a `Vec` of values
    /// of their own allocation each, they were about 3k instructions per admitted request, and
    /// 1.9k with a new value each from the buffer (issue 16). Names and values are
    /// `RateLimitHeaders::pairs`'.
    pub fn add_to(self, answer: &mut HeaderMap) {
        let readings = [
            (self.limits.requests, &RATE_LIMIT_REQUESTS),
            (self.limits.tokens, &RATE_LIMIT_TOKENS),
        ];
        if readings.iter().any(|(reading, _)| reading.is_some()) {
            ANSWER_VALUES.with_borrow_mut(|values| {
                for (measure, (reading, [limit, remaining, reset])) in
                    readings.into_iter().enumerate()
                {
                    let Some(reading) = reading else { continue };
                    let slot = measure * 3;
                    let numbers = [
                        values.value(slot, reading.limit.into(), |out| {
                            out.write_str(itoa::Buffer::new().format(reading.limit))
                        }),
                        values.value(slot + 1, reading.remaining.into(), |out| {
                            out.write_str(itoa::Buffer::new().format(reading.remaining))
                        }),
                        values.value(slot + 2, reading.reset.as_nanos(), |out| {
                            write_openai_duration(reading.reset, out)
                        }),
                    ];
                    for (name, value) in [limit, remaining, reset].into_iter().zip(numbers) {
                        if let Some(value) = value {
                            answer.insert(name.clone(), value);
                        }
                    }
                }
            });
        }
        if let Some(value) = self.trace {
            answer.insert(HeaderName::from_static(DECISION_HEADER), value);
        }
    }
}

thread_local! {
    static ANSWER_VALUES: RefCell<AnswerValues> = RefCell::default();
}

/// This thread's rate-limit header values: the buffer they are cut from, and the last value of
/// each of the six headers (limit, remaining, reset of requests, then of tokens).
#[derive(Default)]
struct AnswerValues {
    buffer: BytesMut,
    /// Each header's last value and what it was written from (a number, or a duration in ns):
    /// the same again is a clone of it (a reference count), not written. A key's limit is the
    /// same on all its answers; the rest repeats while the limit is far from reached.
    last: [Option<(u128, HeaderValue)>; 6],
}

impl AnswerValues {
    /// The value of header `slot` for `of`: the last one when it was for `of` too, else what
    /// `write` writes. A new value shares the buffer's allocation (a reference count); a new
    /// buffer is allocated once the rest is too short. Small, so that a long answer holding a
    /// value keeps little of it alive.
    fn value(
        &mut self,
        slot: usize,
        of: u128,
        write: impl FnOnce(&mut BytesMut) -> std::fmt::Result,
    ) -> Option<HeaderValue> {
        const BUFFER_BYTES: usize = 512;
        const VALUE_BYTES: usize = 32;
        let last = self.last.get_mut(slot)?;
        if let Some((_, value)) = last.as_ref().filter(|(last_of, _)| *last_of == of) {
            return Some(value.clone());
        }
        if self.buffer.capacity() - self.buffer.len() < VALUE_BYTES {
            self.buffer.reserve(BUFFER_BYTES);
        }
        if write(&mut self.buffer).is_err() {
            self.buffer.clear();
            return None;
        }
        let value = HeaderValue::from_maybe_shared(self.buffer.split().freeze()).ok()?;
        *last = Some((of, value.clone()));
        Some(value)
    }
}

/// `x-ratelimit-{limit,remaining,reset}-requests`, then `-tokens`.
static RATE_LIMIT_REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
static RATE_LIMIT_TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// An admitted request. Lives until the request's record is written.
#[derive(Debug)]
pub struct Admission {
    pub operation: Operation,
    pub grant: access_admit::Admission,
    /// The caller's metric counters (its key entry keeps them: no label lookup per request).
    counters: Option<Arc<KeyCounters>>,
}

impl Admitter {
    pub fn new(access: Arc<AccessControl>, metrics: AccessMetrics) -> Self {
        Self {
            access,
            metrics,
            oidc: None,
        }
    }

    /// OIDC bearer tokens (JWTs) identify callers too, before the key table is asked.
    pub fn with_oidc_callers(mut self, callers: Option<OidcCallers>) -> Self {
        self.oidc = callers;
        self
    }

    /// Identify, for OIDC tokens on /v1: `None` when that is off or the bearer is not a JWT (a
    /// client key, then); a token that fails verification is the same 401 as an unknown key.
    async fn oidc_caller(&self, request: &HttpRequest) -> Option<Result<Arc<KeyEntry>, Denial>> {
        let callers = self.oidc.as_ref().filter(|_| self.access.enabled())?;
        let token = bearer(request.headers()).filter(|token| OidcCallers::is_token(token))?;
        let client = request.app_data::<web::Data<awc::Client>>()?;
        Some(callers.caller(token, client).await.map_err(|error| {
            tracing::info!(error = %error, "OIDC token on /v1 refused");
            Denial::UnknownKey
        }))
    }

    pub fn access(&self) -> &AccessControl {
        &self.access
    }

    /// Admits `admit` or says why not; records the caller in `log` either way and the decision's
    /// headers in `request`'s extensions (for the accept middleware to add to the answer).
    pub async fn admit(
        &self,
        request: &HttpRequest,
        log: &mut AccessLog,
        admit: &AdmitRequest<'_>,
    ) -> Result<(), ApiError> {
        // Image-data URLs are capabilities (128 random bits, handed out in image answers) that
        // browsers load without credentials.
        if admit.operation == Operation::ImagesData {
            return Ok(());
        }
        // Without access control (and no protected endpoint) every request is admitted with
        // nothing to settle: skip building the decision's request and its open grant.
        if !self.access.may_refuse() {
            return Ok(());
        }
        let path = access_path(admit.operation);
        let estimate = || admit.token_reservation();
        let access_request = access_admit::AdmitRequest {
            operation: operation_name(admit.operation),
            path: &path,
            method: request.method().as_str(),
            model: Some(admit.model),
            token_estimate: &estimate,
        };
        let now = SystemTime::now();
        // The OIDC verification's future is boxed: inline, it would make every request's
        // future larger, and futures are copied as they are awaited.
        let decision = match self.oidc.is_some() {
            true => {
                Box::pin(self.oidc_decision(request, admit.headers, &access_request, now)).await
            }
            false => self.access.admit(admit.headers, &access_request, now),
        };
        let decision = match decision {
            Decision::Made(decision) => decision,
            Decision::Waiting(decision) => decision.await,
        };
        self.record(request, log, admit, decision)
    }

    /// The decision for a request that may present an OIDC token instead of a key.
    async fn oidc_decision<'a>(
        &'a self,
        request: &HttpRequest,
        headers: &HeaderMap,
        access_request: &access_admit::AdmitRequest<'_>,
        now: SystemTime,
    ) -> Decision<'a> {
        match self.oidc_caller(request).await {
            Some(Ok(entry)) => self
                .access
                .admit_entry(headers, access_request, now, &entry),
            Some(Err(denial)) => Decision::Made(Err(Rejection {
                denial,
                caller: None,
            })),
            None => self.access.admit(headers, access_request, now),
        }
    }

    /// Counts the decision, puts its headers where the accept middleware finds them and its
    /// caller and grant in the record.
    fn record(
        &self,
        request: &HttpRequest,
        log: &mut AccessLog,
        admit: &AdmitRequest<'_>,
        decision: Result<access_admit::Admission, Rejection>,
    ) -> Result<(), ApiError> {
        match decision {
            Ok(grant) => {
                let counters = grant.caller.as_ref().map(|caller| {
                    let counters = self.metrics.of_key(caller);
                    counters.admitted();
                    counters
                });
                let has_limits = grant.headers.requests.is_some() || grant.headers.tokens.is_some();
                if has_limits || grant.trace.is_some() {
                    request
                        .extensions_mut()
                        .insert(AnswerHeaders::of(&grant.headers, grant.trace.as_deref()));
                }
                log.caller = grant.caller.clone();
                log.admission = Some(Box::new(Admission {
                    operation: admit.operation,
                    grant,
                    counters,
                }));
                Ok(())
            }
            Err(rejection) => {
                self.metrics.refused(
                    rejection.caller.as_ref().map(|c| &c.metric_label),
                    &rejection.denial,
                );
                log.caller = rejection.caller;
                if let Denial::RateLimited(refusal) = &rejection.denial {
                    request
                        .extensions_mut()
                        .insert(AnswerHeaders::of(&refusal.headers, refusal.trace.as_ref()));
                }
                Err(error_of(rejection.denial, admit.model, admit.operation))
            }
        }
    }

    /// The caller `request` presents (a key, or an OIDC token with `--oidc-v1`), for listings
    /// that are not admissions (`GET /v1/models`): `Ok(None)` when access control is off.
    pub async fn caller(&self, request: &HttpRequest) -> Result<Option<KeyView>, ApiError> {
        let caller = match self.oidc_caller(request).await {
            Some(found) => found.map(|entry| Some(KeyView::of(entry))),
            None => self.access.caller(request.headers()),
        };
        caller.map_err(|denial| error_of(denial, "", Operation::ChatCompletions))
    }

    /// Whether the caller may see `model` in `GET /v1/models` (and `/v1/models/{model}`): a
    /// model it may not use does not exist for it.
    pub fn may_see(caller: Option<&KeyView>, model: &str) -> bool {
        caller.is_none_or(|key| key.may_use_model(model))
    }
}

impl Admission {
    /// Called once by the record stage with the usage the answer reported (or llmux estimated),
    /// `None` when there was none. A request no upstream answered, or that llmux refused after
    /// admission (an unknown route), is given back.
    pub fn settle(&mut self, usage: Option<&Usage>, outcome: Outcome) {
        match (usage, outcome) {
            (_, Outcome::Rejected | Outcome::UpstreamUnreachable | Outcome::UpstreamTimeout) => {
                self.grant.refund();
            }
            (Some(usage), _) => {
                self.grant.settle_tokens(usage.prompt + usage.completion);
                if let Some(counters) = &self.counters {
                    counters.tokens(usage.prompt, usage.completion);
                }
            }
            // No usage (an answer without one, a client gone): the reservation stands.
            (None, _) => {}
        }
    }
}

/// The path quota policies and protected endpoints name (`/v1/chat/completions`): static for
/// the operations with a body that names a model (formatting it was an allocation per request),
/// formatted for the rest.
fn access_path(operation: Operation) -> Cow<'static, str> {
    Cow::Borrowed(match operation {
        Operation::ChatCompletions => "/v1/chat/completions",
        Operation::Completions => "/v1/completions",
        Operation::Embeddings => "/v1/embeddings",
        Operation::Moderations => "/v1/moderations",
        Operation::AudioSpeech => "/v1/audio/speech",
        Operation::AudioTranscriptions => "/v1/audio/transcriptions",
        Operation::AudioTranslations => "/v1/audio/translations",
        Operation::ImagesGenerations => "/v1/images/generations",
        Operation::ImagesEdits => "/v1/images/edits",
        Operation::ImagesVariations => "/v1/images/variations",
        Operation::Responses => "/v1/responses",
        Operation::ResponsesInputTokens => "/v1/responses/input_tokens",
        Operation::ResponsesCompact => "/v1/responses/compact",
        Operation::RealtimeClientSecrets => "/v1/realtime/client_secrets",
        other => return Cow::Owned(format!("/{}", other.path())),
    })
}

/// The name keys' `allowed_operations` use for an operation.
pub fn operation_name(operation: Operation) -> &'static str {
    match operation {
        Operation::ChatCompletions => "chat",
        Operation::Completions => "completions",
        Operation::Embeddings => "embeddings",
        Operation::Moderations => "moderations",
        Operation::AudioSpeech => "audio_speech",
        Operation::AudioTranscriptions => "audio_transcriptions",
        Operation::AudioTranslations => "audio_translations",
        Operation::ImagesGenerations
        | Operation::ImagesEdits
        | Operation::ImagesVariations
        | Operation::ImagesData => "images",
        Operation::Responses
        | Operation::ResponsesInputTokens
        | Operation::ResponsesCompact
        | Operation::ResponsesRetrieve
        | Operation::ResponsesDelete
        | Operation::ResponsesCancel
        | Operation::ResponsesInputItems => "responses",
        // Families go by their config name (`files`, `batches`, ...), as in `"families"`.
        Operation::Family(route) => route.family.name(),
        Operation::Passthrough => "passthrough",
        Operation::Realtime | Operation::RealtimeClientSecrets | Operation::RealtimeCalls => {
            "realtime"
        }
    }
}

/// What the client sees for each denial.
fn error_of(denial: Denial, model: &str, operation: Operation) -> ApiError {
    match denial {
        Denial::MissingKey => ApiError::InvalidApiKey {
            reason: "You didn't provide an API key. Send it as `Authorization: Bearer KEY` (or `api-key: KEY`).",
        },
        Denial::UnknownKey => ApiError::InvalidApiKey {
            reason: "Incorrect API key provided.",
        },
        Denial::KeyExpired => ApiError::InvalidApiKey {
            reason: "This API key has expired.",
        },
        Denial::KeyDisabled => ApiError::InvalidApiKey {
            reason: "This API key is disabled.",
        },
        // The same answer as a model that does not exist: no enumeration.
        Denial::ModelNotAllowed => ApiError::UnknownModel {
            model: model.to_owned(),
        },
        Denial::OperationNotAllowed => ApiError::PermissionDenied {
            operation: operation_name(operation),
        },
        Denial::RateLimited(refusal) => ApiError::RateLimited {
            retry_after: refusal.retry_after,
            limit: refusal.limit_name,
        },
        Denial::StoreUnavailable(error) => ApiError::AccessUnavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::limits::Reading;

    #[test]
    fn estimates_count_the_prompt_and_reserve_the_allowed_output() {
        let headers = HeaderMap::new();
        let body =
            br#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"Hello there"}]}"#;
        let request = AdmitRequest {
            operation: Operation::ChatCompletions,
            model: "m",
            headers: &headers,
            body,
        };
        assert!(request.estimated_prompt_tokens() > 0);
        assert_eq!(request.token_reservation(), body.len() as u64 / 4 + 100);
        assert!(Admitter::may_see(None, "m"));
    }

    #[test]
    fn answer_headers_are_the_rate_limit_pairs() {
        let reading = |limit, remaining, reset_ms| Reading {
            limit,
            remaining,
            reset: std::time::Duration::from_millis(reset_ms),
            retry_after: std::time::Duration::ZERO,
        };
        // Each set after each other one: values like the last ones of their header, and not.
        let sets = [
            RateLimitHeaders::default(),
            RateLimitHeaders {
                requests: Some(reading(60, 59, 1000)),
                tokens: None,
            },
            RateLimitHeaders {
                requests: Some(reading(1_000_000_000, 0, 20)),
                tokens: Some(reading(90_000, 12_345, 3_720_500)),
            },
            RateLimitHeaders {
                requests: Some(reading(60, 58, 1000)),
                tokens: Some(reading(90_000, 12_345, 3_720_501)),
            },
        ];
        for headers in sets.iter().chain(&sets).chain(sets.iter().rev()) {
            let mut answer = HeaderMap::new();
            AnswerHeaders::of(headers, None).add_to(&mut answer);
            let mut ours: Vec<(String, String)> = answer
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            let mut pairs: Vec<(String, String)> = headers
                .pairs()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect();
            ours.sort();
            pairs.sort();
            assert_eq!(ours, pairs);
        }
        let trace = DecisionTrace {
            allowed: true,
            source: access_admit::TraceSource::None,
            limit_name: None,
            window: None,
            limit: None,
            remaining: None,
            retry_after: std::time::Duration::ZERO,
            api_path: None,
            model: None,
            bucket: None,
            checked: 0,
        };
        let mut answer = HeaderMap::new();
        AnswerHeaders::of(&RateLimitHeaders::default(), Some(&trace)).add_to(&mut answer);
        assert_eq!(answer.len(), 1);
        assert_eq!(
            answer.get(DECISION_HEADER).unwrap().to_str().unwrap(),
            trace.to_string()
        );
    }

    #[test]
    fn header_values_cut_from_the_shared_buffer_stay_whole() {
        // More values than one buffer holds, new and repeated, in two slots: each keeps its
        // own bytes when the buffer moves on, and a repeat is the value it repeats.
        let mut values = AnswerValues::default();
        let numbers: Vec<u64> = (0..200u64).flat_map(|n| [n * 1_000_003; 2]).collect();
        let cut: Vec<(u64, HeaderValue, HeaderValue)> = numbers
            .iter()
            .map(|&number| {
                let mut value = |slot| {
                    values
                        .value(slot, number.into(), |out| {
                            out.write_str(itoa::Buffer::new().format(number))
                        })
                        .unwrap()
                };
                (number, value(0), value(5))
            })
            .collect();
        for (number, first, second) in cut {
            assert_eq!(first.to_str().unwrap(), number.to_string());
            assert_eq!(second.to_str().unwrap(), number.to_string());
        }
        assert!(values.value(6, 1, |out| out.write_str("1")).is_none());
    }

    #[test]
    fn access_paths_are_the_operations_paths_with_a_slash() {
        let others = [
            Operation::ResponsesRetrieve,
            Operation::ResponsesCancel,
            Operation::Passthrough,
            Operation::Realtime,
            Operation::RealtimeCalls,
        ];
        for operation in Operation::JSON
            .iter()
            .chain(Operation::MULTIPART)
            .chain(&others)
        {
            assert_eq!(
                access_path(*operation),
                format!("/{}", operation.path()),
                "{operation:?}"
            );
        }
    }

    #[test]
    fn an_admission_stays_small() {
        // The record boxes it: an allocation of 1 KB or more makes glibc consolidate its fast
        // bins (`malloc_consolidate`), about 2k instructions per request when it was 1.2 KB
        // (issue 16).
        let size = std::mem::size_of::<Admission>();
        eprintln!(
            "Admission {size} bytes, grant {}",
            std::mem::size_of::<access_admit::Admission>()
        );
        assert!(size <= 512, "{size} bytes");
    }

    #[test]
    fn every_operation_has_an_access_name() {
        for operation in Operation::JSON.iter().chain(Operation::MULTIPART) {
            let name = operation_name(*operation);
            assert!(
                crate::access::key::OPERATIONS.contains(&name),
                "{operation:?}: {name}"
            );
        }
    }
}
