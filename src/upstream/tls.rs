//! Per-provider TLS settings: extra CA roots, the system trust store, a client certificate (mTLS).
//!
//! The config loader reads the PEM files once (`TlsSettings::read`) and keeps what they hold in
//! the endpoint; each worker builds its rustls config from that (`TlsSettings::client_config`).
//! There is deliberately no switch to skip verification.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// What a provider's (or an endpoint's) `tls` object says, its files read and checked.
pub struct TlsSettings {
    /// Certificates of `ca_file`, trusted in addition to the built-in web roots.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `use_system_roots`: also trust the operating system's store (rustls-native-certs).
    pub use_system_roots: bool,
    /// `client_cert_file` + `client_key_file`: presented to upstreams that ask for one.
    client_identity: Option<ClientIdentity>,
    /// Names the settings: equal settings (same file contents) share one client per worker.
    pub profile: TlsProfile,
    /// The files, for `/admin/config` and logs (never their contents).
    pub files: Vec<PathBuf>,
}

/// A digest of everything in `TlsSettings`: the key of the per-worker client map.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlsProfile([u8; 32]);

struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The raw `tls` keys, paths already resolved against the config file's dir.
#[derive(Debug, Default, Clone)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub use_system_roots: bool,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// A problem with one `tls` key: which key, and what is wrong (never any key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProblem {
    pub key: &'static str,
    pub message: String,
}

impl TlsSettings {
    /// Reads and checks the files `files` names. Every problem is reported, each naming its key.
    pub fn read(files: &TlsFiles) -> Result<Self, Vec<TlsProblem>> {
        let mut problems = Vec::new();
        let extra_roots = match &files.ca_file {
            None => Vec::new(),
            Some(path) => match read_ca_file(path) {
                Ok(roots) => roots,
                Err(message) => {
                    problems.push(TlsProblem {
                        key: "ca_file",
                        message,
                    });
                    Vec::new()
                }
            },
        };
        let client_identity = match (&files.client_cert_file, &files.client_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                problems.push(TlsProblem {
                    key: "client_cert_file",
                    message: "client_cert_file needs client_key_file".into(),
                });
                None
            }
            (None, Some(_)) => {
                problems.push(TlsProblem {
                    key: "client_key_file",
                    message: "client_key_file needs client_cert_file".into(),
                });
                None
            }
            (Some(cert), Some(key)) => {
                let chain = read_certificates(cert).map_err(|message| TlsProblem {
                    key: "client_cert_file",
                    message,
                });
                let key = read_private_key(key).map_err(|message| TlsProblem {
                    key: "client_key_file",
                    message,
                });
                match (chain, key) {
                    (Ok(chain), Ok(key)) => Some(ClientIdentity { chain, key }),
                    (chain, key) => {
                        problems.extend(chain.err());
                        problems.extend(key.err());
                        None
                    }
                }
            }
        };
        if files.use_system_roots {
            if let Err(message) = system_roots() {
                problems.push(TlsProblem {
                    key: "use_system_roots",
                    message: message.clone(),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let settings = Self {
            profile: profile_of(
                &extra_roots,
                files.use_system_roots,
                client_identity.as_ref(),
            ),
            extra_roots,
            use_system_roots: files.use_system_roots,
            client_identity,
            files: [
                &files.ca_file,
                &files.client_cert_file,
                &files.client_key_file,
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        };
        // rustls checks the key against what it supports; a mismatch is a config error here,
        // not a failed request later.
        match settings.client_config(&[], Alpn::Http) {
            Ok(_) => Ok(settings),
            Err(error) => Err(vec![TlsProblem {
                key: "client_key_file",
                message: format!("the client certificate and key are not usable: {error}"),
            }]),
        }
    }

    /// The rustls config for these settings: web roots + `global_roots` (`--upstream-ca-file`)
    /// + `ca_file` (+ the system store), the client certificate when there is one.
    pub fn client_config(
        &self,
        global_roots: &[CertificateDer<'static>],
        alpn: Alpn,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut roots = base_roots(global_roots);
        roots.add_parsable_certificates(self.extra_roots.iter().cloned());
        if self.use_system_roots {
            if let Ok(system) = system_roots() {
                roots.add_parsable_certificates(system.iter().cloned());
            }
        }
        let builder = builder()?.with_root_certificates(roots);
        let mut config = match &self.client_identity {
            Some(identity) => {
                builder.with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.protocols();
        Ok(config)
    }
}

/// The rustls config of endpoints without `tls` settings: web roots + `global_roots`.
pub fn default_client_config(
    global_roots: &[CertificateDer<'static>],
    alpn: Alpn,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = builder()?
        .with_root_certificates(base_roots(global_roots))
        .with_no_client_auth();
    config.alpn_protocols = alpn.protocols();
    Ok(config)
}

/// Which protocols TLS offers: HTTP/2 first for requests; WebSockets need HTTP/1.1 (awc opens
/// no WebSocket over HTTP/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    Http,
    WebSocket,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::WebSocket => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Reads a CA bundle (`--upstream-ca-file`, `ca_file`): one or more PEM certificates.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let roots = read_certificates(path)?;
    let mut store = rustls::RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(roots.iter().cloned());
    if unusable > 0 {
        return Err(format!(
            "`{}`: {unusable} of its {} certificates cannot be used as a trust anchor",
            path.display(),
            roots.len()
        ));
    }
    Ok(roots)
}

impl fmt::Debug for TlsSettings {
    /// Names the files and the profile, never their contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("files", &self.files)
            .field("extra_roots", &self.extra_roots.len())
            .field("use_system_roots", &self.use_system_roots)
            .field("client_certificate", &self.client_identity.is_some())
            .field("profile", &self.profile)
            .finish()
    }
}

impl fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.profile == other.profile && self.files == other.files
    }
}

fn builder(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
}

fn base_roots(global_roots: &[CertificateDer<'static>]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.add_parsable_certificates(global_roots.iter().cloned());
    roots
}

/// The system store, read once per process: it is large and does not change while we run.
fn system_roots() -> Result<&'static [CertificateDer<'static>], &'static String> {
    static SYSTEM: OnceLock<Result<Vec<CertificateDer<'static>>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            match (loaded.certs.is_empty(), loaded.errors.first()) {
                (true, Some(error)) => {
                    Err(format!("the system trust store cannot be read: {error}"))
                }
                (true, None) => Err("the system trust store holds no certificate".into()),
                (false, _) => Ok(loaded.certs),
            }
        })
        .as_deref()
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path)
        .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
    let certificates: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&text).collect();
    match certificates {
        Err(error) => Err(format!("`{}` is not valid PEM: {error}", path.display())),
        Ok(certificates) if certificates.is_empty() => Err(format!(
            "`{}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )),
        Ok(certificates) => Ok(certificates),
    }
}

/// Reads a private key. Errors name the file and what is wrong, never any of its bytes.
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path)
        .map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "`{}` holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        ),
        _ => format!("`{}` is not a valid PEM private key", path.display()),
    })
}

fn profile_of(
    extra_roots: &[CertificateDer<'_>],
    use_system_roots: bool,
    client_identity: Option<&ClientIdentity>,
) -> TlsProfile {
    let mut digest = Sha256::new();
    let mut part = |tag: u8, bytes: &[u8]| {
        digest.update([tag]);
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    for root in extra_roots {
        part(b'r', root);
    }
    part(b's', &[u8::from(use_system_roots)]);
    if let Some(identity) = client_identity {
        for certificate in &identity.chain {
            part(b'c', certificate);
        }
        part(b'k', identity.key.secret_der());
    }
    TlsProfile(digest.finalize().into())
}
