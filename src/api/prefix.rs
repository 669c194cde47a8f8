//! `--path-prefix`: the same URL map under extra prefixes (`/inference/v1/...`, `/api/v1/...`).
//! A request under a prefix has it removed before routing, so every route, the passthrough and
//! the access log see `/v1/...` as if it had been sent without it.
use std::rc::Rc;

use actix_web::dev::ServiceRequest;
use actix_web::http::Uri;

/// The configured prefixes, each `/name` (no trailing slash), longest first so `/api/v2` wins
/// over `/api`.
#[derive(Debug, Clone, Default)]
pub struct PathPrefixes(Rc<[String]>);

impl PathPrefixes {
    pub fn new(prefixes: &[String]) -> Self {
        let mut prefixes = prefixes.to_vec();
        prefixes.sort_by_key(|prefix| std::cmp::Reverse(prefix.len()));
        prefixes.dedup();
        Self(prefixes.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes the first prefix the request's path starts with (as whole segments).
    pub fn strip(&self, request: &mut ServiceRequest) {
        let Some(stripped) = self.stripped(request.uri()) else {
            return;
        };
        request.head_mut().uri = stripped.clone();
        request.match_info_mut().get_mut().update(&stripped);
    }

    fn stripped(&self, uri: &Uri) -> Option<Uri> {
        let path = uri.path();
        let rest = self.0.iter().find_map(|prefix| {
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some(rest)
        })?;
        let rest = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = path_and_query.parse().ok();
        Uri::from_parts(parts).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(prefixes: &[&str], uri: &str, expected: Option<&str>) {
        let prefixes =
            PathPrefixes::new(&prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        let uri: Uri = uri.parse().unwrap();
        assert_eq!(
            prefixes.stripped(&uri).map(|u| u.to_string()),
            expected.map(str::to_owned),
            "{uri}"
        );
    }

    #[test]
    fn prefixes_are_removed_as_whole_segments_keeping_the_query() {
        check(&["/inference"], "/inference/v1/models", Some("/v1/models"));
        check(
            &["/api", "/api/v2"],
            "/api/v2/v1/files?limit=2",
            Some("/v1/files?limit=2"),
        );
        check(
            &["/api"],
            "/api/v1/files?limit=2",
            Some("/v1/files?limit=2"),
        );
        check(&["/api"], "/apis/v1/models", None);
        check(&["/api"], "/v1/models", None);
        check(&["/api"], "/api", Some("/"));
    }
}
