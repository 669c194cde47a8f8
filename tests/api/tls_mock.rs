//! TLS test kit: a test CA (rcgen), an HTTPS mock upstream (HTTP/2 by ALPN, optionally requiring a
//! client certificate), and a CONNECT proxy that counts its tunnels.
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA and what it signed, as PEM files in a temp dir.
pub struct TestPki {
    pub dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// `ca.pem`: the CA certificate (the bundle clients trust).
    pub ca_file: PathBuf,
}

/// A certificate and its key, PEM files and DER.
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl TestPki {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            dir,
            ca,
            ca_key,
            ca_file,
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Issued {
        self.issue(name, vec!["127.0.0.1".into(), "localhost".into()])
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, Vec::new())
    }

    fn issue(&self, name: &str, names: Vec<String>) -> Issued {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert_file,
            key_file,
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A rustls server config presenting `server` (no client certificate asked).
pub fn server_config(server: &Issued) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server.cert.clone()], server.key.clone_key())
        .unwrap()
}

/// What the HTTPS mock saw.
#[derive(Default)]
struct Seen {
    /// (HTTP version, client address) of every request.
    requests: Mutex<Vec<(String, SocketAddr)>>,
}

/// An HTTPS upstream answering every POST with an OpenAI-style chat completion that echoes the
/// model, and every GET with `{"version": .., "peer": ..}`. HTTP/2 and HTTP/1.1 by ALPN.
pub struct TlsMock {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    seen: Arc<Seen>,
    handle: ServerHandle,
}

impl TlsMock {
    pub async fn start(server: &Issued) -> Self {
        Self::start_with(server, None).await
    }

    /// `client_ca`: only clients with a certificate from that CA get through the handshake.
    pub async fn start_with(server: &Issued, client_ca: Option<&TestPki>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pki) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(pki.ca.der().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        // actix adds h2 and http/1.1 to the ALPN protocols.
        let config = builder
            .with_single_cert(vec![server.cert.clone()], server.key.clone_key())
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let data = web::Data::from(Arc::clone(&seen));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .shutdown_timeout(0)
        .disable_signals()
        .listen_rustls_0_23(listener, config)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url: format!("https://127.0.0.1:{port}"),
            port,
            seen,
            handle,
        }
    }

    /// HTTP versions of the requests received (`HTTP/2.0`, `HTTP/1.1`).
    pub fn versions(&self) -> Vec<String> {
        self.seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|(v, _)| v.clone())
            .collect()
    }

    /// Distinct client connections the requests came on.
    pub fn connections(&self) -> usize {
        let requests = self.seen.requests.lock().unwrap();
        requests
            .iter()
            .map(|(_, peer)| *peer)
            .collect::<HashSet<_>>()
            .len()
    }

    pub fn request_count(&self) -> usize {
        self.seen.requests.lock().unwrap().len()
    }
}

impl Drop for TlsMock {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn answer(request: HttpRequest, body: web::Bytes, seen: web::Data<Seen>) -> HttpResponse {
    let version = format!("{:?}", request.version());
    let peer = request.peer_addr().unwrap();
    seen.requests.lock().unwrap().push((version.clone(), peer));
    if request.method() == actix_web::http::Method::GET {
        return HttpResponse::Ok().json(json!({"version": version, "peer": peer.to_string()}));
    }
    let model = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_owned))
        .unwrap_or_default();
    // Concurrent requests overlap on the connection: each answer waits a little.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-tls",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": version}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
}

/// An HTTP CONNECT proxy on 127.0.0.1:0 that counts the tunnels it opened and their targets.
pub struct ConnectProxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    tunnels: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<String>>>,
    /// `Proxy-Authorization` values received.
    authorizations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let targets = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let tunnels = Arc::clone(&tunnels);
            let targets = Arc::clone(&targets);
            let authorizations = Arc::clone(&authorizations);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let tunnels = Arc::clone(&tunnels);
                    let targets = Arc::clone(&targets);
                    let authorizations = Arc::clone(&authorizations);
                    tokio::spawn(async move {
                        let _ = serve_connect(stream, tunnels, targets, authorizations).await;
                    });
                }
            }
        });
        Self {
            url: format!("http://127.0.0.1:{port}"),
            tunnels,
            targets,
            authorizations,
            task,
        }
    }

    pub fn tunnels(&self) -> usize {
        self.tunnels.load(Ordering::SeqCst)
    }

    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connect(
    mut stream: tokio::net::TcpStream,
    tunnels: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<String>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
        if head.len() > 8192 {
            return Ok(());
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_owned();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("proxy-authorization") {
                authorizations.lock().unwrap().push(value.trim().to_owned());
            }
        }
    }
    let mut parts = request_line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        stream
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
        stream
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    targets.lock().unwrap().push(target.to_owned());
    tunnels.fetch_add(1, Ordering::SeqCst);
    stream
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    Ok(())
}
