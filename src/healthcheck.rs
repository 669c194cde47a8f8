//! `llmux healthcheck`: a blocking GET /health on the local instance, so container images need no curl.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Asks `http://HOST:PORT/health`; `Ok` when it answers 200 within `timeout`.
pub fn run(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let address = target(host, port)?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| format!("no answer from {address} within {}s", timeout.as_secs_f64()))?;
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: llmux-healthcheck\r\n\r\n"
    )
    .map_err(|e| format!("cannot send to {address}: {e}"))?;
    // The status line is all we need; it fits in the first read of a 200 from /health.
    let mut head = [0_u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("no answer from {address}: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..read]);
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(status) => Err(format!("{address} answered /health with HTTP {status}")),
        None => Err(format!("{address} did not answer HTTP")),
    }
}

/// The address to ask: a wildcard listen address is reached on loopback.
fn target(host: &str, port: u16) -> Result<SocketAddr, String> {
    match host
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ok((Ipv4Addr::LOCALHOST, port).into()),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => Ok((Ipv6Addr::LOCALHOST, port).into()),
        Ok(ip) => Ok((ip, port).into()),
        Err(_) => (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{host}` resolves to no address")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        assert_eq!(
            target("0.0.0.0", 8000).unwrap(),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(target("::", 1).unwrap(), "[::1]:1".parse().unwrap());
        assert_eq!(target("[::]", 1).unwrap(), "[::1]:1".parse().unwrap());
        assert_eq!(
            target("10.1.2.3", 80).unwrap(),
            "10.1.2.3:80".parse().unwrap()
        );
    }
}
