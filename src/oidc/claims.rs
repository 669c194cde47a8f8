//! Reading claims by name: a top-level member, or a dotted path into nested objects
//! (Keycloak's `realm_access.roles`). A literal top-level name wins, since namespaced claims
//! (`https://example.com/roles`) contain dots themselves.
use serde_json::Value;

fn lookup<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    name.split('.')
        .try_fold(claims, |value, segment| value.get(segment))
}

/// A string claim (the subject).
pub fn claim_text(claims: &Value, name: &str) -> Option<String> {
    lookup(claims, name)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

/// A claim that is a string or a list of strings; anything else reads as none.
pub fn claim_strings(claims: &Value, name: &str) -> Vec<String> {
    match lookup(claims, name) {
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(claims: Value, name: &str, expected: &[&str]) {
        assert_eq!(claim_strings(&claims, name), expected, "{name} in {claims}");
    }

    #[test]
    fn claims_are_read_top_level_nested_and_namespaced() {
        check(json!({"roles": ["a", "b"]}), "roles", &["a", "b"]);
        check(json!({"roles": "a"}), "roles", &["a"]);
        check(
            json!({"realm_access": {"roles": ["admin"]}}),
            "realm_access.roles",
            &["admin"],
        );
        check(
            json!({"resource_access": {"llmux": {"roles": ["x"]}}}),
            "resource_access.llmux.roles",
            &["x"],
        );
        check(
            json!({"https://example.com/roles": ["n"]}),
            "https://example.com/roles",
            &["n"],
        );
        check(json!({"roles": [1, "a", null]}), "roles", &["a"]);
        check(json!({"roles": {"a": true}}), "roles", &[]);
        check(json!({}), "realm_access.roles", &[]);
        assert_eq!(
            claim_text(&json!({"sub": "u1"}), "sub").as_deref(),
            Some("u1")
        );
        assert_eq!(claim_text(&json!({"sub": ""}), "sub"), None);
        assert_eq!(claim_text(&json!({"sub": 5}), "sub"), None);
    }
}
