//! The admin credential: a token from `LLMUX_ADMIN_TOKEN` or the file `LLMUX_ADMIN_TOKEN_FILE`
//! names, read once at start-up and compared in constant time.
use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const ADMIN_TOKEN_VARIABLE: &str = "LLMUX_ADMIN_TOKEN";
pub const ADMIN_TOKEN_FILE_VARIABLE: &str = "LLMUX_ADMIN_TOKEN_FILE";

/// The admin token's SHA-256: comparing digests in constant time hides the token's length too.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Reads the token from the environment: the variable, or the file the other one names
    /// (its content without the trailing newline). `Ok(None)`: no admin token configured.
    /// Both set, an unreadable file or an empty token are errors: llmux does not start.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let direct = env(ADMIN_TOKEN_VARIABLE);
        let file = env(ADMIN_TOKEN_FILE_VARIABLE).filter(|f| !f.is_empty());
        let token = match (direct, file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "set {ADMIN_TOKEN_VARIABLE} or {ADMIN_TOKEN_FILE_VARIABLE}, not both"
                ))
            }
            (Some(token), None) => token,
            (None, Some(file)) => std::fs::read_to_string(&file).map_err(|error| {
                format!("cannot read the admin token file `{file}` ({ADMIN_TOKEN_FILE_VARIABLE}): {error}")
            })?,
            (None, None) => return Ok(None),
        };
        let token = token.trim_end_matches(['\n', '\r']);
        if token.trim().is_empty() {
            return Err(format!(
                "the admin token ({ADMIN_TOKEN_VARIABLE} or {ADMIN_TOKEN_FILE_VARIABLE}) is empty"
            ));
        }
        Ok(Some(Self::new(token)))
    }

    /// Whether `presented` is the admin token, in time independent of where they differ.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<Option<AdminToken>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AdminToken::from_env(&|name| vars.get(name).cloned())
    }

    #[test]
    fn the_token_comes_from_the_variable_or_a_file() {
        assert!(from(&[]).unwrap().is_none());
        let token = from(&[(ADMIN_TOKEN_VARIABLE, "s3cret")]).unwrap().unwrap();
        assert!(token.verify("s3cret"));
        assert!(!token.verify("s3cre"));
        assert!(!token.verify(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let path = file.to_str().unwrap();
        let token = from(&[(ADMIN_TOKEN_FILE_VARIABLE, path)]).unwrap().unwrap();
        assert!(token.verify("from-file"));
    }

    #[test]
    fn ambiguous_unreadable_or_empty_tokens_are_errors() {
        assert!(from(&[
            (ADMIN_TOKEN_VARIABLE, "a"),
            (ADMIN_TOKEN_FILE_VARIABLE, "/x")
        ])
        .unwrap_err()
        .contains("not both"));
        assert!(from(&[(ADMIN_TOKEN_FILE_VARIABLE, "/nonexistent/token")])
            .unwrap_err()
            .contains("cannot read"));
        assert!(from(&[(ADMIN_TOKEN_VARIABLE, " \n")])
            .unwrap_err()
            .contains("empty"));
    }
}
