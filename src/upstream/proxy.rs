//! Egress proxy: `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY`, by HTTP CONNECT tunnels.
//!
//! awc cannot talk to a proxy itself, but it lets the TCP step be replaced
//! (`awc::Connector::connector`). `ProxyConnector` is that step: for a proxied upstream it opens
//! a TCP connection to the proxy, asks `CONNECT host:port`, and hands awc the tunnel, on which
//! awc runs TLS (and ALPN) to the upstream as it would on a direct connection. Plain-http
//! upstreams are tunnelled the same way rather than sent in absolute form: one code path, and the
//! proxy sees no request (hence no header) of ours. Hand-written because no well-kept crate does
//! a CONNECT client for awc; the handshake is one request and one response head.
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, Connector, ConnectorService};
use actix_web::http::Uri;

use crate::proxy::interim::SkipInterim;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The proxies the environment names, and the hosts that bypass them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EgressProxy {
    https: Option<ProxyAddress>,
    http: Option<ProxyAddress>,
    no_proxy: NoProxy,
}

/// `http://[user:password@]host:port` of a proxy.
#[derive(Clone, PartialEq, Eq)]
struct ProxyAddress {
    host: String,
    port: u16,
    /// `Basic ...` from the URL's user info, for `Proxy-Authorization`.
    authorization: Option<String>,
}

/// `NO_PROXY`: `*`, or host names (`example.com` also covers its subdomains, as does
/// `.example.com`), IP addresses, each optionally with `:port`.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct NoProxy {
    everything: bool,
    entries: Vec<(String, Option<u16>)>,
}

impl EgressProxy {
    /// Reads `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (upper case first, then
    /// lower case, as curl does) through `env`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let read = |name: &str| {
            env(name)
                .or_else(|| env(&name.to_ascii_lowercase()))
                .filter(|value| !value.trim().is_empty())
        };
        let all = read("ALL_PROXY");
        let parse = |name: &str, value: Option<String>| -> Result<Option<ProxyAddress>, String> {
            value
                .map(|value| {
                    ProxyAddress::parse(&value).map_err(|error| format!("{name}: {error}"))
                })
                .transpose()
        };
        Ok(Self {
            https: parse("HTTPS_PROXY", read("HTTPS_PROXY").or_else(|| all.clone()))?,
            http: parse("HTTP_PROXY", read("HTTP_PROXY").or(all))?,
            no_proxy: NoProxy::parse(read("NO_PROXY").as_deref().unwrap_or("")),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.https.is_none() && self.http.is_none()
    }

    /// The proxy a connection to `uri` goes through, if any.
    fn for_uri(&self, uri: &Uri, host: &str, port: u16) -> Option<&ProxyAddress> {
        let proxy = match uri.scheme_str() {
            Some("https" | "wss") => self.https.as_ref(),
            _ => self.http.as_ref(),
        }?;
        (!self.no_proxy.matches(host, port)).then_some(proxy)
    }
}

impl fmt::Debug for EgressProxy {
    /// Proxy hosts and ports only: the user info may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show =
            |proxy: &Option<ProxyAddress>| proxy.as_ref().map(|p| format!("{}:{}", p.host, p.port));
        f.debug_struct("EgressProxy")
            .field("https", &show(&self.https))
            .field("http", &show(&self.http))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyAddress {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        // curl takes a bare `host:port` as http.
        let with_scheme = match text.contains("://") {
            true => text.to_owned(),
            false => format!("http://{text}"),
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|_| "not a proxy URL (http://host:port)".to_owned())?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "a `{other}://` proxy is not supported: llmux speaks plain HTTP (CONNECT) to the proxy"
                ))
            }
            None => return Err("not a proxy URL (http://host:port)".into()),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| "the proxy URL has no host".to_owned())?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        if host.is_empty() {
            return Err("the proxy URL has no host".into());
        }
        let authorization = authority.as_str().rsplit_once('@').map(|(user_info, _)| {
            let decoded = percent_decode(user_info);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        Ok(Self {
            host,
            port: authority.port_u16().unwrap_or(80),
            authorization,
        })
    }
}

impl NoProxy {
    fn parse(text: &str) -> Self {
        let mut no_proxy = Self::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                no_proxy.everything = true;
                continue;
            }
            let (host, port) = split_port(entry);
            no_proxy
                .entries
                .push((host.trim_start_matches('.').to_ascii_lowercase(), port));
        }
        no_proxy
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.entries.iter().any(|(entry, entry_port)| {
            entry_port.is_none_or(|p| p == port)
                && (host == *entry
                    || host
                        .strip_suffix(entry.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        })
    }
}

/// `host:port`, `[v6]:port`, or a host without a port (a bare IPv6 address included).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    out
}

/// awc's TCP step: direct, or a CONNECT tunnel through the proxy `EgressProxy` names.
#[derive(Clone)]
pub struct ProxyConnector {
    direct: ConnectorService,
    proxy: std::rc::Rc<EgressProxy>,
}

impl ProxyConnector {
    pub fn new(proxy: EgressProxy) -> Self {
        Self {
            direct: Connector::default().service(),
            proxy: std::rc::Rc::new(proxy),
        }
    }
}

/// Longest proxy answer head read; a proxy that sends more is not one we can use.
const MAX_PROXY_HEAD: usize = 8 * 1024;

impl Service<ConnectInfo<Uri>> for ProxyConnector {
    type Response = Connection<Uri, SkipInterim<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    actix_service::always_ready!();

    fn call(&self, info: ConnectInfo<Uri>) -> Self::Future {
        let target_host = info.hostname().trim_matches(['[', ']']).to_owned();
        let target_port = info.port();
        let proxy = self
            .proxy
            .for_uri(info.request(), &target_host, target_port)
            .cloned();
        // Interim 1xx answers are skipped on plain-HTTP bytes only (`proxy::interim`): under TLS
        // they are ciphertext.
        let plain = !matches!(info.request().scheme_str(), Some("https" | "wss"));
        let Some(proxy) = proxy else {
            let connecting = self.direct.call(info);
            return Box::pin(async move {
                let (io, uri) = connecting.await?.into_parts();
                Ok(Connection::new(uri, SkipInterim::new(io, plain)))
            });
        };
        let uri = info.request().clone();
        // awc bounds the whole call with the connect timeout.
        Box::pin(async move {
            let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
                .await
                .map_err(|error| {
                    ConnectError::Io(std::io::Error::new(
                        error.kind(),
                        format!(
                            "cannot connect to the egress proxy {}:{}: {error}",
                            proxy.host, proxy.port
                        ),
                    ))
                })?;
            let _ = stream.set_nodelay(true);
            tunnel(&mut stream, &proxy, &target_host, target_port)
                .await
                .map_err(ConnectError::Io)?;
            Ok(Connection::new(uri, SkipInterim::new(stream, plain)))
        })
    }
}

/// Sends `CONNECT host:port` and reads the proxy's answer head: a 2xx opens the tunnel.
async fn tunnel(
    stream: &mut TcpStream,
    proxy: &ProxyAddress,
    host: &str,
    port: u16,
) -> std::io::Result<()> {
    let authority = match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(authorization) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(authorization);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    // Byte by byte up to the blank line, so nothing of the tunnel's first bytes is consumed.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_PROXY_HEAD {
            return Err(std::io::Error::other(
                "the egress proxy's answer head is too long",
            ));
        }
        let byte = stream.read_u8().await.map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!("the egress proxy closed before answering CONNECT: {error}"),
            )
        })?;
        head.push(byte);
    }
    let status_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(status_line)
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(()),
        Some(code) => Err(std::io::Error::other(format!(
            "the egress proxy refused CONNECT {authority} with {code}"
        ))),
        None => Err(std::io::Error::other(
            "the egress proxy's answer is not HTTP",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn check(no_proxy: &str, host: &str, port: u16, expected: bool) {
        assert_eq!(
            NoProxy::parse(no_proxy).matches(host, port),
            expected,
            "NO_PROXY={no_proxy} host={host}:{port}"
        );
    }

    #[test]
    fn no_proxy_matches_hosts_subdomains_ports_and_star() {
        check("example.com", "example.com", 443, true);
        check("example.com", "api.example.com", 443, true);
        check(".example.com", "api.example.com", 443, true);
        check("example.com", "badexample.com", 443, false);
        check("localhost,127.0.0.1", "127.0.0.1", 8000, true);
        check("internal:8443", "internal", 8443, true);
        check("internal:8443", "internal", 443, false);
        check("[::1]:80, ::1", "[::1]", 443, true);
        check("*", "anything", 1, true);
        check("", "anything", 1, false);
    }

    #[test]
    fn proxies_come_from_the_environment_upper_case_first() {
        let env = env_of(&[
            ("HTTPS_PROXY", "http://user:p%40ss@proxy:3128"),
            ("https_proxy", "http://ignored:1"),
            ("http_proxy", "proxy2:8080"),
            ("no_proxy", "localhost"),
        ]);
        let proxy = EgressProxy::from_env(&env).unwrap();
        let https = proxy.https.as_ref().unwrap();
        assert_eq!((https.host.as_str(), https.port), ("proxy", 3128));
        let expected = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(
            https.authorization.as_deref(),
            Some(&*format!("Basic {expected}"))
        );
        let http = proxy.http.as_ref().unwrap();
        assert_eq!(
            (http.host.as_str(), http.port, http.authorization.is_none()),
            ("proxy2", 8080, true)
        );
        let uri: Uri = "https://localhost:1/x".parse().unwrap();
        assert!(proxy.for_uri(&uri, "localhost", 1).is_none());
        let uri: Uri = "https://api.example.com/x".parse().unwrap();
        assert!(proxy.for_uri(&uri, "api.example.com", 443).is_some());
        assert!(!format!("{proxy:?}").contains("p%40ss"));
    }

    #[test]
    fn tls_proxies_and_garbage_are_refused() {
        let error =
            EgressProxy::from_env(&env_of(&[("HTTPS_PROXY", "https://proxy:443")])).unwrap_err();
        assert!(error.contains("not supported"), "{error}");
        assert!(EgressProxy::from_env(&env_of(&[("HTTP_PROXY", "http://")])).is_err());
        assert!(EgressProxy::from_env(&env_of(&[])).unwrap().is_empty());
    }
}
