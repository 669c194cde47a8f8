//! An in-test OIDC identity provider on 127.0.0.1: its own RSA keys (fixtures) and EC keys
//! (generated per test), a discovery document, a JWKS that can be rotated, and a hang switch.
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key the provider signs with, and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl SigningKey {
    /// `fixture` names a PKCS#1 DER file under tests/fixtures/oidc.
    pub fn rsa(fixture: &str, kid: &str, algorithm: Algorithm) -> Self {
        let path = format!(
            "{}/tests/fixtures/oidc/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        );
        let der = std::fs::read(path).unwrap();
        let pair = RsaKeyPair::from_der(&der).unwrap();
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        Self {
            kid: kid.into(),
            algorithm,
            encoding: EncodingKey::from_rsa_der(&der),
            jwk: json!({"kty": "RSA", "use": "sig", "kid": kid, "alg": format!("{algorithm:?}"),
                        "n": b64(&public.n), "e": b64(&public.e)}),
        }
    }

    /// A fresh P-256 (ES256) or P-384 (ES384) key.
    pub fn ec(kid: &str, algorithm: Algorithm) -> Self {
        let (signing, curve) = match algorithm {
            Algorithm::ES256 => (&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
            Algorithm::ES384 => (&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
            other => panic!("not an EC algorithm: {other:?}"),
        };
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &random).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &random).unwrap();
        // Uncompressed point: 0x04 || x || y.
        let point = &pair.public_key().as_ref()[1..];
        let (x, y) = point.split_at(point.len() / 2);
        Self {
            kid: kid.into(),
            algorithm,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "use": "sig", "kid": kid, "alg": format!("{algorithm:?}"),
                        "crv": curve, "x": b64(x), "y": b64(y)}),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

#[derive(Default)]
struct State {
    issuer: Mutex<String>,
    keys: Mutex<Vec<Value>>,
    hang: AtomicBool,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

pub struct IdentityProvider {
    /// `http://127.0.0.1:PORT/realms/test`
    pub issuer: String,
    state: Arc<State>,
}

async fn hang_if_asked(state: &State) {
    if state.hang.load(Ordering::SeqCst) {
        futures_util::future::pending::<()>().await;
    }
}

async fn discovery(state: web::Data<State>) -> HttpResponse {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    hang_if_asked(&state).await;
    let issuer = state.issuer.lock().unwrap().clone();
    HttpResponse::Ok().json(
        json!({"issuer": issuer, "jwks_uri": format!("{issuer}/protocol/openid-connect/certs")}),
    )
}

async fn jwks(state: web::Data<State>) -> HttpResponse {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    hang_if_asked(&state).await;
    HttpResponse::Ok().json(json!({"keys": state.keys.lock().unwrap().clone()}))
}

impl IdentityProvider {
    pub async fn start(keys: &[&SigningKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = format!("http://127.0.0.1:{port}/realms/test");
        let state = Arc::new(State::default());
        *state.issuer.lock().unwrap() = issuer.clone();
        let data = web::Data::from(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/realms/test/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route(
                    "/realms/test/protocol/openid-connect/certs",
                    web::get().to(jwks),
                )
        })
        .workers(1)
        .shutdown_timeout(0)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        let provider = Self { issuer, state };
        provider.publish(keys);
        provider
    }

    /// Replaces the published keys (rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|key| key.jwk.clone()).collect();
    }

    /// From now on, discovery and JWKS requests never get an answer.
    pub fn hang(&self) {
        self.state.hang.store(true, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Claims of a valid token for `subject` with `roles` under Keycloak's `realm_access`.
    pub fn claims(&self, subject: &str, roles: &[&str]) -> Value {
        let now = llmux::store::now();
        json!({"iss": self.issuer, "sub": subject, "aud": "llmux", "iat": now, "exp": now + 300,
               "realm_access": {"roles": roles}})
    }
}
