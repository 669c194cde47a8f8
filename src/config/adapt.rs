//! Provider adaptation settings (`headers`, `query`, `auth_header`/`auth_scheme`, `target_path`,
//! `drop_params`, `response_format_fallback`, `upstream_embedding_format`, `model_field`) resolved
//! once at load time into what the hot path sends as is. The endpoint's setting wins over its
//! provider's; `headers` and `query` merge name by name.
use actix_web::http::header::{self, HeaderName, HeaderValue};

use super::load::{EnvLookup, Severity};
use super::locate::Segment;
use super::schema::AdaptationSchema;
use crate::routing::endpoint::normalize_path;
use crate::secret::ApiKey;

/// The resolved settings of one endpoint.
#[derive(Debug)]
pub struct Adaptation {
    pub auth_header: HeaderName,
    pub authorization: Option<HeaderValue>,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    pub upstream_path: Box<str>,
    pub query: Option<Box<str>>,
    pub drop_params: Box<[Box<str>]>,
    pub json_object_fallback: bool,
    pub float_embeddings_upstream: bool,
    pub model_field: bool,
}

/// A problem found while resolving, at a JSON path of the file.
#[derive(Debug)]
pub struct Finding {
    pub severity: Severity,
    pub path: Vec<Segment>,
    pub message: String,
}

/// Where the provider's and the endpoint's settings sit in the file, for findings.
pub struct Sources<'a> {
    pub provider: AdaptationSchema<'a>,
    pub provider_path: &'a [Segment],
    pub endpoint: AdaptationSchema<'a>,
    pub endpoint_path: &'a [Segment],
}

/// Headers llmux computes itself: configuring them would break the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-request-id",
];

/// Resolves one endpoint's settings. `None` when any of them is an error (reported in `findings`).
pub fn resolve(
    sources: &Sources<'_>,
    path: &str,
    target_path: Option<(&str, Vec<Segment>)>,
    api_key: Option<&ApiKey>,
    env: EnvLookup<'_>,
    findings: &mut Vec<Finding>,
) -> Option<Adaptation> {
    let errors_before = count_errors(findings);
    let mut resolver = Resolver { sources, findings };

    let auth_header = match resolver.pick(|a| a.auth_header, "auth_header") {
        None => header::AUTHORIZATION,
        Some((name, at)) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                resolver.error(at, format!("`{name}` is not a valid HTTP header name"));
                header::AUTHORIZATION
            }
        },
    };
    let scheme = resolver.pick(|a| a.auth_scheme, "auth_scheme");
    let authorization = api_key.and_then(|key| {
        let (value, at) = match &scheme {
            None => (format!("Bearer {}", key.expose()), None),
            Some(("", at)) => (key.expose().to_owned(), Some(at.clone())),
            Some((scheme, at)) => (format!("{scheme} {}", key.expose()), Some(at.clone())),
        };
        match HeaderValue::from_str(&value) {
            Ok(mut value) => {
                value.set_sensitive(true);
                Some(value)
            }
            // A bad key is reported at api_key_variable by the loader; only the scheme is ours.
            Err(_) => {
                if let Some(at) = at {
                    if HeaderValue::from_str(key.expose()).is_ok() {
                        resolver.error(
                            at,
                            "this scheme contains characters not allowed in an HTTP header".into(),
                        );
                    }
                }
                None
            }
        }
    });

    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    for (name, value, at) in resolver.merged(|a| a.headers, "headers") {
        let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
            resolver.error(at, format!("`{name}` is not a valid HTTP header name"));
            continue;
        };
        if RESERVED_HEADERS.contains(&header_name.as_str()) {
            resolver.error(
                at,
                format!("llmux sets `{name}` itself; it cannot be configured"),
            );
            continue;
        }
        let Some((expanded, from_env)) = resolver.expand(value, env, &at) else {
            continue;
        };
        match HeaderValue::from_str(&expanded) {
            Ok(mut header_value) => {
                header_value.set_sensitive(from_env);
                headers.push((header_name, header_value));
            }
            Err(_) => resolver.error(
                at,
                format!("the value of header `{name}` contains characters not allowed in an HTTP header"),
            ),
        }
    }

    let query: Vec<String> = resolver
        .merged(|a| a.query, "query")
        .into_iter()
        .map(|(name, value, _)| format!("{}={}", encode_query(name), encode_query(value)))
        .collect();

    let upstream_path = match target_path {
        None => path.into(),
        Some((target, at)) => {
            let target = normalize_path(target);
            if target.is_empty() {
                resolver.error(at, "the target_path is empty".into());
            }
            target.into()
        }
    };

    let drop_params = resolver
        .pick(|a| a.drop_params, "drop_params")
        .map(|(params, _)| {
            params
                .iter()
                .map(|p| Box::<str>::from(p.as_str()))
                .collect()
        })
        .unwrap_or_default();

    let json_object_fallback = match resolver
        .pick(|a| a.response_format_fallback, "response_format_fallback")
    {
        None => false,
        Some(("json_object", _)) => true,
        Some((other, at)) => {
            resolver.error(
                at,
                format!("response_format_fallback `{other}` is not supported; the only value is \"json_object\""),
            );
            false
        }
    };
    let float_embeddings_upstream = match resolver
        .pick(|a| a.upstream_embedding_format, "upstream_embedding_format")
    {
        None => false,
        Some(("float", _)) => true,
        Some((other, at)) => {
            resolver.error(
                at,
                format!("upstream_embedding_format `{other}` is not supported; the only value is \"float\""),
            );
            false
        }
    };
    let model_field = resolver
        .pick(|a| a.model_field, "model_field")
        .is_none_or(|(rewrite, _)| rewrite);

    (count_errors(resolver.findings) == errors_before).then(|| Adaptation {
        auth_header,
        authorization,
        headers: headers.into_boxed_slice(),
        upstream_path,
        query: (!query.is_empty()).then(|| query.join("&").into()),
        drop_params,
        json_object_fallback,
        float_embeddings_upstream,
        model_field,
    })
}

fn count_errors(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
}

struct Resolver<'a, 'b> {
    sources: &'a Sources<'a>,
    findings: &'b mut Vec<Finding>,
}

impl<'a> Resolver<'a, '_> {
    fn error(&mut self, path: Vec<Segment>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Error,
            path,
            message,
        });
    }

    fn warn(&mut self, path: Vec<Segment>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            path,
            message,
        });
    }

    /// The endpoint's setting, else the provider's, with the JSON path it came from.
    fn pick<T>(
        &self,
        get: impl Fn(&AdaptationSchema<'a>) -> Option<T>,
        key: &str,
    ) -> Option<(T, Vec<Segment>)> {
        let at = |base: &[Segment]| {
            let mut path = base.to_vec();
            path.push(Segment::Key(key.to_owned()));
            path
        };
        match get(&self.sources.endpoint) {
            Some(value) => Some((value, at(self.sources.endpoint_path))),
            None => {
                get(&self.sources.provider).map(|value| (value, at(self.sources.provider_path)))
            }
        }
    }

    /// A name -> value map merged name by name, the endpoint's entries replacing the provider's.
    fn merged(
        &self,
        get: impl Fn(&AdaptationSchema<'a>) -> Option<&'a indexmap::IndexMap<String, String>>,
        key: &str,
    ) -> Vec<(&'a str, &'a str, Vec<Segment>)> {
        let mut out: Vec<(&'a str, &'a str, Vec<Segment>)> = Vec::new();
        let sources = [
            (get(&self.sources.provider), self.sources.provider_path),
            (get(&self.sources.endpoint), self.sources.endpoint_path),
        ];
        for (map, base) in sources {
            for (name, value) in map.into_iter().flatten() {
                let mut path = base.to_vec();
                path.push(Segment::Key(key.to_owned()));
                path.push(Segment::Key(name.clone()));
                out.retain(|(existing, _, _)| !existing.eq_ignore_ascii_case(name));
                out.push((name.as_str(), value.as_str(), path));
            }
        }
        out
    }

    /// Expands every `${VAR}` of `value`. `None` (reported) when a variable is unset or the
    /// syntax is broken; the bool says whether anything came from the environment.
    fn expand(
        &mut self,
        value: &str,
        env: EnvLookup<'_>,
        at: &[Segment],
    ) -> Option<(String, bool)> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        let mut from_env = false;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.error(at.to_vec(), "`${` without a closing `}`".into());
                return None;
            };
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                self.error(
                    at.to_vec(),
                    format!("`${{{name}}}` is not an environment variable name"),
                );
                return None;
            }
            match env(name) {
                Some(found) => out.push_str(&found),
                None => {
                    self.warn(
                        at.to_vec(),
                        format!(
                            "environment variable `{name}` is not set; this header is not sent"
                        ),
                    );
                    return None;
                }
            }
            from_env = true;
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Some((out, from_env))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{parse_file, FileLoad};
    use crate::routing::endpoint::Endpoint;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-1".into()),
            "ORG" => Some("org-1".into()),
            _ => None,
        }
    }

    /// A file with one provider (`provider` settings) and one endpoint (`endpoint` settings).
    fn load(provider: &str, endpoint: &str) -> FileLoad {
        let text = format!(
            "{{\"p\": {{\"api_key_variable\": \"KEY\", \"target_base_url\": \"http://h\"{provider},\n\"models\": {{\"m\": {{\"endpoints\": [\n{{\"path\": \"v1/chat/completions\", \"target_model_name\": \"t\"{endpoint}}}]}}}}}}}}"
        );
        parse_file(std::path::Path::new("a.json"), &text, &env)
    }

    fn endpoint(provider: &str, endpoint: &str) -> Endpoint {
        let loaded = load(provider, endpoint);
        assert_eq!(loaded.errors().count(), 0, "{:?}", loaded.problems);
        loaded.endpoints.unwrap().remove(0)
    }

    #[test]
    fn defaults_change_nothing() {
        let e = endpoint("", "");
        assert_eq!(e.auth_header, header::AUTHORIZATION);
        assert_eq!(e.authorization.unwrap(), "Bearer sk-1");
        assert_eq!(e.upstream_uri.to_string(), "http://h/v1/chat/completions");
        assert!(e.headers.is_empty() && e.drop_params.is_empty() && e.model_field);
        assert!(!e.json_object_fallback && !e.float_embeddings_upstream);
    }

    #[test]
    fn the_endpoint_wins_and_maps_merge_name_by_name() {
        let e = endpoint(
            r#", "auth_scheme": "Token", "query": {"a": "1", "b": "x y"}, "headers": {"X-Org": "${ORG}", "X-A": "p"}, "drop_params": ["logprobs"], "model_field": false"#,
            r#", "auth_header": "x-api-key", "query": {"a": "2"}, "headers": {"x-a": "e"}, "drop_params": [], "model_field": true, "target_path": "/api/chat/""#,
        );
        assert_eq!(e.auth_header.as_str(), "x-api-key");
        assert_eq!(e.authorization.as_ref().unwrap(), "Token sk-1");
        assert!(e.authorization.as_ref().unwrap().is_sensitive());
        assert_eq!(e.upstream_uri.to_string(), "http://h/api/chat?b=x%20y&a=2");
        let headers: Vec<_> = e
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(headers, [("x-org", "org-1"), ("x-a", "e")]);
        assert!(e.headers[0].1.is_sensitive());
        assert!(e.drop_params.is_empty() && e.model_field);
        assert_eq!(
            e.uri_with_query("v1/chat/completions/sub", Some("q=1"))
                .unwrap()
                .to_string(),
            "http://h/api/chat/sub?q=1&b=x%20y&a=2"
        );
    }

    #[test]
    fn an_unset_variable_in_a_header_warns_and_omits_the_header() {
        let loaded = load(r#", "headers": {"X-Org": "${NOPE}"}"#, "");
        assert_eq!(loaded.errors().count(), 0);
        assert!(loaded.problems[0].message.contains("`NOPE` is not set"));
        assert!(loaded.endpoints.unwrap()[0].headers.is_empty());
    }

    fn check_error(provider: &str, endpoint: &str, json_path: &str, needle: &str) {
        let loaded = load(provider, endpoint);
        assert!(loaded.endpoints.is_none(), "{provider} {endpoint}");
        let error = loaded.errors().next().unwrap();
        assert_eq!(error.json_path, json_path, "{error}");
        assert!(error.message.contains(needle), "{error}");
        assert!(error.position.is_some());
    }

    #[test]
    fn bad_settings_are_errors_at_their_place() {
        check_error(
            r#", "auth_header": "a b""#,
            "",
            "p.auth_header",
            "header name",
        );
        check_error(
            "",
            r#", "auth_scheme": "B\nx""#,
            "p.models.m.endpoints[0].auth_scheme",
            "scheme",
        );
        check_error(
            r#", "headers": {"Host": "x"}"#,
            "",
            "p.headers.Host",
            "itself",
        );
        check_error(
            r#", "headers": {"X": "a\u0001"}"#,
            "",
            "p.headers.X",
            "characters",
        );
        check_error(
            r#", "headers": {"X": "${ORG"}"#,
            "",
            "p.headers.X",
            "closing",
        );
        check_error(
            r#", "response_format_fallback": "text""#,
            "",
            "p.response_format_fallback",
            "json_object",
        );
        check_error(
            "",
            r#", "upstream_embedding_format": "base64""#,
            "p.models.m.endpoints[0].upstream_embedding_format",
            "float",
        );
        check_error(
            "",
            r#", "target_path": "/""#,
            "p.models.m.endpoints[0].target_path",
            "empty",
        );
    }

    #[test]
    fn query_text_is_percent_encoded() {
        for (text, expected) in [
            ("2024-10-21", "2024-10-21"),
            ("a b&c=d", "a%20b%26c%3Dd"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(encode_query(text), expected);
        }
    }
}
