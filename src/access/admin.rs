//! The admin credential and its one gate. The credential is a token from `--admin-token`
//! (`LLMUX_ADMIN_TOKEN`) or the file `--admin-token-file` (`LLMUX_ADMIN_TOKEN_FILE`) names, read
//! once at start-up and compared in constant time; when OIDC is configured with admin values,
//! an OIDC admin's token is accepted too. The gate stands in front of `/admin/*`, the admin API
//! (`/api/admin/...`) and, with access control on, the status page.
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::oidc::{Oidc, OidcUser};
use crate::secret::ApiKey;

pub const ADMIN_TOKEN_VARIABLE: &str = "LLMUX_ADMIN_TOKEN";
pub const ADMIN_TOKEN_FILE_VARIABLE: &str = "LLMUX_ADMIN_TOKEN_FILE";
/// Shorter tokens are refused at start-up: they can be guessed.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// The admin token's SHA-256: comparing digests in constant time hides the token's length too.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

/// Who passed the gate.
#[derive(Debug, Clone)]
pub enum Admin {
    Token,
    Oidc(OidcUser),
}

/// Why the gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    /// No admin credential is configured at all.
    NotConfigured,
    /// No credential, a wrong one, or an OIDC token that does not verify.
    Unauthorized,
    /// A valid OIDC token without any admin role or group.
    NotAnAdmin,
}

/// The one gate of everything admin-only. Built once at start-up, shared by every worker.
#[derive(Default)]
pub struct AdminGate {
    token: Option<AdminToken>,
    /// Present when OIDC admins are accepted (OIDC configured with admin values).
    oidc: Option<Arc<Oidc>>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// The one reader of the admin credential: the token (`--admin-token`, else
    /// `LLMUX_ADMIN_TOKEN` in `env`) or the file named by `--admin-token-file` (else
    /// `LLMUX_ADMIN_TOKEN_FILE`), its content without the trailing newline. `Ok(None)`: none
    /// configured. Both set, an unreadable file, or a token shorter than 16 characters are
    /// errors naming the setting: llmux does not start.
    pub fn read(
        flag: Option<&ApiKey>,
        file_flag: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let direct = flag
            .map(|token| token.expose().to_owned())
            .or_else(|| env(ADMIN_TOKEN_VARIABLE));
        let file = file_flag
            .map(|file| file.display().to_string())
            .or_else(|| env(ADMIN_TOKEN_FILE_VARIABLE))
            .filter(|file| !file.is_empty());
        let token = match (direct, file) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "set {ADMIN_TOKEN_VARIABLE} (--admin-token) or {ADMIN_TOKEN_FILE_VARIABLE} (--admin-token-file), not both"
                ))
            }
            (Some(token), None) => token,
            (None, Some(file)) => std::fs::read_to_string(&file).map_err(|error| {
                format!("cannot read the admin token file `{file}` ({ADMIN_TOKEN_FILE_VARIABLE}, --admin-token-file): {error}")
            })?,
            (None, None) => return Ok(None),
        };
        let token = token.trim_end_matches(['\n', '\r']);
        if token.trim().chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(format!(
                "the admin token ({ADMIN_TOKEN_VARIABLE} / --admin-token or {ADMIN_TOKEN_FILE_VARIABLE} / --admin-token-file) must be at least {MIN_ADMIN_TOKEN_CHARS} characters"
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

impl AdminGate {
    /// `token`: the admin token, unless the admin API is OIDC-only; `oidc`: the verifier, when
    /// OIDC admins are accepted.
    pub fn new(token: Option<AdminToken>, oidc: Option<Arc<Oidc>>) -> Self {
        Self { token, oidc }
    }

    /// Whether any admin credential exists (else `/admin/*` answers 503 saying how to set one).
    pub fn is_configured(&self) -> bool {
        self.token.is_some() || self.oidc.is_some()
    }

    /// Checks the `Authorization: Bearer` of a request. An OIDC token is verified only when it
    /// looks like a JWT, so other strings never reach the identity provider; `client` fetches
    /// the provider's keys when the token names one not cached yet.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        client: &awc::Client,
    ) -> Result<Admin, AdminRefusal> {
        if !self.is_configured() {
            return Err(AdminRefusal::NotConfigured);
        }
        let presented = bearer(headers).ok_or(AdminRefusal::Unauthorized)?;
        if self.token.as_ref().is_some_and(|t| t.verify(presented)) {
            return Ok(Admin::Token);
        }
        let Some(oidc) = self
            .oidc
            .as_deref()
            .filter(|_| Oidc::looks_like_jwt(presented))
        else {
            return Err(AdminRefusal::Unauthorized);
        };
        let user = oidc.verify(presented, client).await.map_err(|error| {
            tracing::info!(error = %error, "OIDC token refused");
            AdminRefusal::Unauthorized
        })?;
        if oidc.is_admin(&user) {
            Ok(Admin::Oidc(user))
        } else {
            Err(AdminRefusal::NotAnAdmin)
        }
    }
}

/// The token of `Authorization: Bearer TOKEN`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const TOKEN: &str = "s3cret-long-enough-token";

    fn from(vars: &[(&str, &str)]) -> Result<Option<AdminToken>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AdminToken::read(None, None, &|name| vars.get(name).cloned())
    }

    #[test]
    fn the_token_comes_from_the_flag_the_variable_or_a_file() {
        assert!(from(&[]).unwrap().is_none());
        let token = from(&[(ADMIN_TOKEN_VARIABLE, TOKEN)]).unwrap().unwrap();
        assert!(token.verify(TOKEN));
        assert!(!token.verify(&TOKEN[1..]));
        assert!(!token.verify(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file-0123456789\n").unwrap();
        let path = file.to_str().unwrap();
        let token = from(&[(ADMIN_TOKEN_FILE_VARIABLE, path)]).unwrap().unwrap();
        assert!(token.verify("from-file-0123456789"));

        let flag = ApiKey::new("from-the-flag-0123456789");
        let token = AdminToken::read(Some(&flag), None, &|_| None)
            .unwrap()
            .unwrap();
        assert!(token.verify("from-the-flag-0123456789"));
        let token = AdminToken::read(None, Some(&file), &|_| None)
            .unwrap()
            .unwrap();
        assert!(token.verify("from-file-0123456789"));
    }

    #[test]
    fn ambiguous_unreadable_short_or_empty_tokens_are_errors_naming_the_setting() {
        let both = from(&[
            (ADMIN_TOKEN_VARIABLE, TOKEN),
            (ADMIN_TOKEN_FILE_VARIABLE, "/x"),
        ])
        .unwrap_err();
        assert!(both.contains("not both"), "{both}");
        assert!(both.contains("LLMUX_ADMIN_TOKEN_FILE") && both.contains("--admin-token"));
        let flag = ApiKey::new(TOKEN);
        let mixed = AdminToken::read(Some(&flag), None, &|name| {
            (name == ADMIN_TOKEN_FILE_VARIABLE).then(|| "/x".to_owned())
        })
        .unwrap_err();
        assert!(mixed.contains("not both"), "{mixed}");
        assert!(from(&[(ADMIN_TOKEN_FILE_VARIABLE, "/nonexistent/token")])
            .unwrap_err()
            .contains("cannot read"));
        for short in [" \n", "fifteen-chars!!"] {
            let error = from(&[(ADMIN_TOKEN_VARIABLE, short)]).unwrap_err();
            assert!(error.contains("at least 16"), "{error}");
        }
        assert!(from(&[(ADMIN_TOKEN_VARIABLE, "sixteen-chars!!!")]).is_ok());
    }

    #[actix_web::test]
    async fn the_gate_takes_the_whole_token_only_as_a_bearer() {
        let client = awc::Client::default();
        let gate = AdminGate::new(Some(AdminToken::new(TOKEN)), None);
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value.parse().unwrap());
            headers
        };
        let bearer = format!("Bearer {TOKEN}");
        assert!(matches!(
            gate.check(&headers(&bearer), &client).await,
            Ok(Admin::Token)
        ));
        for refused in [
            format!("Bearer {TOKEN}x"),
            TOKEN.to_owned(),
            "Bearer".into(),
        ] {
            assert_eq!(
                gate.check(&headers(&refused), &client).await.unwrap_err(),
                AdminRefusal::Unauthorized
            );
        }
        assert_eq!(
            gate.check(&HeaderMap::new(), &client).await.unwrap_err(),
            AdminRefusal::Unauthorized
        );
        assert_eq!(
            AdminGate::default()
                .check(&headers(&bearer), &client)
                .await
                .unwrap_err(),
            AdminRefusal::NotConfigured
        );
    }
}
