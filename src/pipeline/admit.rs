//! admit: the one place that decides whether a caller may make a request, run once the model and
//! the caller are known (after identify, before route). Today it admits everything; client keys
//! (`Authorization: Bearer` / `api-key` in `AdmitRequest::headers`), allowed models and quotas
//! plug in here and nowhere else. The `Admission` it returns travels in the request's record
//! until the record is written: `settle` gets the real token usage the usage tap read, and
//! dropping it is where a concurrency slot would be released.
use actix_web::http::header::HeaderMap;

use super::operation::Operation;
use crate::errors::ApiError;
use crate::proxy::usage::{count_tokens, request_text, Usage};

/// Who decides admissions: built once, shared by every worker (`AppState::admitter`). Holds
/// nothing today; client keys and quota counters will live here.
#[derive(Debug, Default)]
pub struct Admitter {}

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
}

/// An admitted request. Lives until the request's record is written.
#[derive(Debug)]
pub struct Admission {
    pub operation: Operation,
}

impl Admitter {
    /// Admits `request` or says why not (`ApiError::InvalidApiKey`, `UnknownModel` for a model
    /// the key may not use, `RateLimited`, ... once those rules exist).
    pub fn admit(&self, request: &AdmitRequest<'_>) -> Result<Admission, ApiError> {
        Ok(Admission {
            operation: request.operation,
        })
    }

    /// Whether the caller sending `headers` may see `model` in `GET /v1/models` (and
    /// `/v1/models/{model}`): a model it may not use does not exist for it.
    pub fn may_see(&self, _headers: &HeaderMap, _model: &str) -> bool {
        true
    }
}

impl Admission {
    /// Called once by the record stage with the usage the answer reported (or llmux estimated),
    /// `None` when there was none (an error, a client gone before the answer).
    pub fn settle(&mut self, _usage: Option<&Usage>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_admitted_and_estimates_count_the_prompt() {
        let headers = HeaderMap::new();
        let body = br#"{"model":"m","messages":[{"role":"user","content":"Hello there"}]}"#;
        let request = AdmitRequest {
            operation: Operation::ChatCompletions,
            model: "m",
            headers: &headers,
            body,
        };
        let admitter = Admitter::default();
        assert!(admitter.admit(&request).is_ok());
        assert!(request.estimated_prompt_tokens() > 0);
        assert!(admitter.may_see(&headers, "m"));
    }
}
