//! Connections to upstreams: one awc client per TLS profile per worker, HTTP/2 by ALPN, an
//! egress proxy by CONNECT.
//!
//! `Upstream` is built once (`Send`, shared by the workers); each worker makes its
//! `UpstreamClients` from it inside `HttpServer::new` (awc's client is not `Send`), and the
//! attempt stage asks it for the client of an endpoint: `UpstreamClients::for_endpoint`.
pub mod proxy;
pub mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::routing::endpoint::Endpoint;
use proxy::{EgressProxy, ProxyConnector};
use tls::{Alpn, TlsProfile};

/// What every worker's clients share: the connect timeout, `--upstream-ca-file`'s roots and the
/// egress proxy.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub connect_timeout: Duration,
    /// Trusted for every upstream, on top of the built-in web roots.
    global_roots: Arc<[CertificateDer<'static>]>,
    proxy: EgressProxy,
    /// The configs of endpoints without `tls` settings, for requests and for WebSockets.
    default_http: Arc<rustls::ClientConfig>,
    default_websocket: Arc<rustls::ClientConfig>,
}

/// A worker's upstream clients: the default one, and one per distinct TLS profile, made the
/// first time an endpoint with that profile is used. WebSockets get clients of their own that
/// offer only HTTP/1.1 (a WebSocket cannot open over HTTP/2 in awc).
pub struct UpstreamClients {
    upstream: Upstream,
    default_client: awc::Client,
    /// Keyed by profile and ALPN. Grows by one per TLS profile ever configured (a reload
    /// that changes a provider's files adds one); such profiles are few.
    by_profile: RefCell<HashMap<(Option<TlsProfile>, Alpn), awc::Client>>,
}

impl Upstream {
    /// `ca_file` is `--upstream-ca-file`; the proxy settings come from `env`
    /// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`).
    pub fn new(
        connect_timeout: Duration,
        ca_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let global_roots = match ca_file {
            None => Vec::new(),
            Some(path) => tls::read_ca_file(path)?,
        };
        let proxy = EgressProxy::from_env(env)?;
        let default_config = |alpn| {
            tls::default_client_config(&global_roots, alpn)
                .map(Arc::new)
                .map_err(|error| format!("the upstream TLS config does not build: {error}"))
        };
        Ok(Self {
            connect_timeout,
            default_http: default_config(Alpn::Http)?,
            default_websocket: default_config(Alpn::WebSocket)?,
            global_roots: global_roots.into(),
            proxy,
        })
    }

    pub fn proxy(&self) -> &EgressProxy {
        &self.proxy
    }

    /// This worker's clients.
    pub fn clients(&self) -> UpstreamClients {
        let default_client = self.client(self.default_config(Alpn::Http));
        UpstreamClients {
            upstream: self.clone(),
            default_client,
            by_profile: RefCell::default(),
        }
    }

    fn default_config(&self, alpn: Alpn) -> Arc<rustls::ClientConfig> {
        match alpn {
            Alpn::Http => Arc::clone(&self.default_http),
            Alpn::WebSocket => Arc::clone(&self.default_websocket),
        }
    }

    /// One awc client: keep-alive pool without a limit, the proxy's TCP step, no redirects or
    /// default headers (the request's are the client's, filtered).
    fn client(&self, tls: Arc<rustls::ClientConfig>) -> awc::Client {
        let connector = awc::Connector::new()
            .connector(ProxyConnector::new(self.proxy.clone()))
            .rustls_0_23(tls)
            .timeout(self.connect_timeout)
            .handshake_timeout(self.connect_timeout)
            .limit(0)
            .conn_keep_alive(Duration::from_secs(60))
            .conn_lifetime(Duration::from_secs(600));
        awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .disable_redirects()
            .no_default_headers()
            .finish()
    }
}

impl UpstreamClients {
    /// The client for requests to `endpoint`: its TLS profile's, or the default one.
    pub fn for_endpoint(&self, endpoint: &Endpoint) -> awc::Client {
        match &endpoint.tls {
            None => self.default_client.clone(),
            Some(settings) => self.by_profile(Some(settings), Alpn::Http),
        }
    }

    /// The client for a WebSocket to `endpoint`: same TLS profile, HTTP/1.1 only.
    pub fn websocket_for_endpoint(&self, endpoint: &Endpoint) -> awc::Client {
        self.by_profile(endpoint.tls.as_deref(), Alpn::WebSocket)
    }

    /// The client of endpoints without TLS settings (health probes of plain upstreams, tests).
    pub fn default_client(&self) -> awc::Client {
        self.default_client.clone()
    }

    fn by_profile(&self, settings: Option<&tls::TlsSettings>, alpn: Alpn) -> awc::Client {
        let key = (settings.map(|s| s.profile), alpn);
        if let Some(client) = self.by_profile.borrow().get(&key) {
            return client.clone();
        }
        let config = match settings {
            None => self.upstream.default_config(alpn),
            Some(settings) => match settings.client_config(&self.upstream.global_roots, alpn) {
                Ok(config) => Arc::new(config),
                // The loader built this config already, from the same bytes: this cannot happen.
                // The default config still verifies every certificate; only the extra roots
                // and the client certificate are missing, so such upstreams fail, visibly.
                Err(error) => {
                    tracing::error!(%error, profile = ?settings.profile, "an upstream TLS config does not build: using the default one");
                    self.upstream.default_config(alpn)
                }
            },
        };
        let client = self.upstream.client(config);
        self.by_profile.borrow_mut().insert(key, client.clone());
        client
    }
}
