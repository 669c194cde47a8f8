//! Which headers cross the proxy: hop-by-hop headers and client credentials never go upstream.
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The provider's own request id, kept for support tickets with the provider (llmux's request
/// id takes `x-request-id`).
pub static X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");

/// Request headers a client sends that never reach the upstream. Credentials (the client's
/// Authorization is for llmux, not for the provider), connection management, and headers llmux
/// recomputes (Host, Content-Length, the request id, encodings it must be able to read).
/// A `match`, not a list: the compiler dispatches on length first (a scan of the list compared
/// every header with each name, issue 16).
fn dropped_request_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "x-api-key"
            | "api-key"
            // access control: the admin token asking for the decision trace.
            | "x-llmux-admin-token"
            | "openai-organization"
            | "openai-project"
            | "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
            | "accept-encoding"
            | "x-request-id"
    )
}

/// Response headers that describe the upstream connection, not the answer, and `server`, which
/// maps the private topology for anyone (issue 20). The upstream's `x-request-id` is renamed, not
/// dropped (`copy_response_headers`).
fn dropped_response_header(name: &str) -> bool {
    matches!(
        name,
        "server"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "date"
            | "x-request-id"
            // llmux's own (`pipeline::attempt::attempt_headers`): an upstream's would tell what
            // llmux did not, and llmux then appends its own without looking for one first.
            | "x-llmux-attempts"
            | "x-llmux-upstream"
    )
}

fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers.get_all(header::CONNECTION).any(|value| {
        value.to_str().is_ok_and(|listed| {
            listed
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}

/// Copies the client headers that may go upstream into `to`, which has none of them yet.
pub fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    // Room for the client's headers and the few llmux adds (request id, key, trace): the map
    // grows once instead of at every power of two.
    to.reserve(from.len() + 4);
    // One pass; the headers a `Connection` names (rare) are taken out afterwards, instead of
    // looking `Connection` up before the copy and again for every header (issue 16).
    let mut has_connection = false;
    for (name, value) in from.iter() {
        if dropped_request_header(name.as_str()) {
            has_connection |= *name == header::CONNECTION;
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if has_connection {
        remove_named_by_connection(from, to);
    }
}

/// Removes from `to` the headers that `from`'s `Connection` names (hop-by-hop for that hop).
fn remove_named_by_connection(from: &HeaderMap, to: &mut HeaderMap) {
    for value in from.get_all(header::CONNECTION) {
        let Ok(listed) = value.to_str() else {
            continue;
        };
        for token in listed.split(',') {
            // Names are lower case in a map; `from_bytes` lowers the token as the comparison
            // ignored case. A token that is no header name names nothing in the map.
            let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) else {
                continue;
            };
            if to.contains_key(&name) {
                to.remove(name);
            }
        }
    }
}

/// Whether the upstream response header `name` (one of `headers`) goes back to the client: not a
/// hop-by-hop header, neither a static one nor one the upstream's `Connection` names.
pub fn keep_response_header(headers: &HeaderMap, name: &HeaderName) -> bool {
    !dropped_response_header(name.as_str()) && !named_by_connection(headers, name)
}

/// Copies the upstream response headers that go back to the client; the upstream's
/// `x-request-id` becomes `x-upstream-request-id`.
pub fn copy_response_headers(from: &HeaderMap, to: &mut actix_web::HttpResponseBuilder) {
    let mut kept = HeaderMap::with_capacity(from.len() + 1);
    copy_response_headers_to(from, &mut kept);
    for (name, value) in kept {
        to.append_header((name, value));
    }
}

/// `copy_response_headers` into a response's own map (the forwarded answer is built without
/// actix's builder, issue 16).
pub fn copy_response_headers_to(from: &HeaderMap, to: &mut HeaderMap) {
    copy_answer_headers(from, to);
}

/// What the answer's body needs from the upstream's headers: the first value of each, seen while
/// `copy_answer_headers` copies them (one pass instead of a lookup per header, issue 16).
#[derive(Debug, Default)]
pub struct BodyHeaders<'a> {
    pub content_type: Option<&'a HeaderValue>,
    pub content_length: Option<&'a HeaderValue>,
    pub content_encoding: Option<&'a HeaderValue>,
}

/// `copy_response_headers_to`, telling what the body needs on the way. `to` has none of the
/// headers yet.
pub fn copy_answer_headers<'a>(from: &'a HeaderMap, to: &mut HeaderMap) -> BodyHeaders<'a> {
    to.reserve(from.len() + 1);
    let mut body = BodyHeaders::default();
    // One pass, as for the request: the upstream's request id and `Connection` are found on the
    // way instead of being looked up first (issue 16).
    let mut has_connection = false;
    let mut upstream_id = None;
    let mut upstream_sent_ours = false;
    for (name, value) in from.iter() {
        let seen = match *name {
            header::CONTENT_TYPE => &mut body.content_type,
            header::CONTENT_LENGTH => &mut body.content_length,
            header::CONTENT_ENCODING => &mut body.content_encoding,
            _ => &mut None,
        };
        if seen.is_none() {
            *seen = Some(value);
        }
        if dropped_response_header(name.as_str()) {
            has_connection |= *name == header::CONNECTION;
            if *name == X_REQUEST_ID && upstream_id.is_none() {
                upstream_id = Some(value);
            }
            continue;
        }
        upstream_sent_ours |= *name == X_UPSTREAM_REQUEST_ID;
        to.append(name.clone(), value.clone());
    }
    if has_connection {
        remove_named_by_connection(from, to);
    }
    if let Some(id) = upstream_id {
        match upstream_sent_ours {
            false => to.append(X_UPSTREAM_REQUEST_ID.clone(), id.clone()),
            // The provider's id comes first, before an upstream's own values of that name.
            true => {
                let theirs: Vec<HeaderValue> =
                    to.get_all(&X_UPSTREAM_REQUEST_ID).cloned().collect();
                to.insert(X_UPSTREAM_REQUEST_ID.clone(), id.clone());
                for value in theirs {
                    to.append(X_UPSTREAM_REQUEST_ID.clone(), value);
                }
            }
        }
    }
    body
}

/// The client's request id when it sent a usable one, a new one otherwise.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID) {
        let usable = value.len() <= 128 && value.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if usable && !value.is_empty() {
            return value.clone();
        }
    }
    // 128 random bits as 32 hex digits, written without the formatting machinery.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_00000000000000000000000000000000";
    // 64 bits at a time: shifting a u128 per digit cost more than the rest of the id.
    for digits in id[4..].chunks_exact_mut(16) {
        let mut bits = fastrand::u64(..);
        for digit in digits {
            *digit = HEX[(bits & 0xf) as usize];
            bits >>= 4;
        }
    }
    // Owned by the `Bytes` as it is, not copied into a `Vec`: cloning it (the middleware keeps
    // one for the answer, the record one for the line) is a count, where a `Vec`'s bytes were
    // moved into a shared allocation at the first clone (issue 16).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let from = map(&[
            ("authorization", "Bearer client-token"),
            ("cookie", "a=b"),
            ("x-llmux-admin-token", "admin"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("content-type", "application/json"),
            ("openai-beta", "assistants=v2"),
            ("idempotency-key", "k1"),
            ("user-agent", "OpenAI/Python"),
            ("content-length", "12"),
        ]);
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-type",
                "idempotency-key",
                "openai-beta",
                "user-agent"
            ]
        );
    }

    #[test]
    fn response_headers_named_by_connection_stay_behind() {
        // Issue 12: only the static hop-by-hop list was checked on the response side.
        let from = map(&[
            ("connection", "close, x-upstream-hop"),
            ("x-upstream-hop", "1"),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining-requests", "9"),
        ]);
        let mut kept: Vec<&str> = from
            .keys()
            .filter(|name| keep_response_header(&from, name))
            .map(|name| name.as_str())
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-type", "x-ratelimit-remaining-requests"]);
    }

    #[test]
    fn the_upstream_server_header_stays_behind_and_its_request_id_is_renamed() {
        // Issue 20: `server` mapped the topology; the provider's request id was lost.
        let from = map(&[
            ("server", "uvicorn"),
            ("x-request-id", "req_provider_1"),
            ("content-type", "application/json"),
        ]);
        let mut builder = actix_web::HttpResponse::Ok();
        copy_response_headers(&from, &mut builder);
        let response = builder.finish();
        let headers = response.headers();
        assert!(!headers.contains_key("server"));
        assert!(!headers.contains_key("x-request-id"));
        assert_eq!(
            headers.get("x-upstream-request-id").unwrap(),
            "req_provider_1"
        );
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
    }

    /// The answer's headers as `name: value` lines, sorted (a map's order is its hash's).
    fn answer_of(from: &[(&'static str, &'static str)]) -> (Vec<String>, Vec<String>) {
        let from = map(from);
        let mut to = HeaderMap::new();
        let found = copy_answer_headers(&from, &mut to);
        let mut lines: Vec<String> = to
            .iter()
            .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
            .collect();
        lines.sort_unstable();
        let found = [
            found.content_type,
            found.content_length,
            found.content_encoding,
        ]
        .map(|value| value.map_or("-", |v| v.to_str().unwrap()).to_owned());
        (lines, found.to_vec())
    }

    #[test]
    fn answer_headers_are_copied_in_one_pass_as_they_were_with_lookups() {
        // Issue 16: `Connection`, the request id and llmux's own names are found while copying.
        let check = |from: &[(&'static str, &'static str)], lines: &[&str], found: &[&str]| {
            let (copied, seen) = answer_of(from);
            assert_eq!(copied, lines, "{from:?}");
            assert_eq!(seen, found, "{from:?}");
        };
        check(
            &[
                ("content-type", "application/json"),
                ("content-length", "12"),
                ("x-ratelimit-remaining-requests", "9"),
            ],
            &[
                "content-type: application/json",
                "x-ratelimit-remaining-requests: 9",
            ],
            &["application/json", "12", "-"],
        );
        check(
            &[
                ("connection", "close, X-Upstream-Hop"),
                ("x-upstream-hop", "1"),
                ("content-encoding", "gzip"),
                ("x-llmux-attempts", "7"),
                ("x-llmux-upstream", "inner/x@10.0.0.7"),
            ],
            &["content-encoding: gzip"],
            &["-", "-", "gzip"],
        );
        // The provider's id is renamed (its first value), before any of the upstream's own.
        check(
            &[
                ("x-request-id", "req_1"),
                ("x-request-id", "req_2"),
                ("x-upstream-request-id", "theirs"),
            ],
            &[
                "x-upstream-request-id: req_1",
                "x-upstream-request-id: theirs",
            ],
            &["-", "-", "-"],
        );
        let from = map(&[
            ("x-request-id", "req_1"),
            ("x-upstream-request-id", "theirs"),
        ]);
        let mut to = HeaderMap::new();
        copy_answer_headers(&from, &mut to);
        let values: Vec<_> = to.get_all(&X_UPSTREAM_REQUEST_ID).collect();
        assert_eq!(values, ["req_1", "theirs"]);
        // A `Connection` naming the renamed header takes the upstream's own, never llmux's.
        check(
            &[
                ("connection", "x-upstream-request-id"),
                ("x-request-id", "req_1"),
                ("x-upstream-request-id", "theirs"),
            ],
            &["x-upstream-request-id: req_1"],
            &["-", "-", "-"],
        );
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        let given = map(&[("x-request-id", "abc-123")]);
        assert_eq!(request_id(&given), "abc-123");
        let generated = request_id(&HeaderMap::new());
        assert!(generated.to_str().unwrap().starts_with("req_"));
        assert_ne!(generated, request_id(&HeaderMap::new()));
    }
}
