//! Judgements about network addresses that the token server and the sidecar
//! share.

/// Whether a URL host (as a URL parser gives it: IPv6 in brackets or not)
/// names this machine: a loopback address, `localhost` or a name under
/// `.localhost` (RFC 6761 §6.3).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = bare.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1",
            "127.9.9.9",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST",
            "a.localhost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.7",
            "[fd00::1]",
            "localhost.example.com",
            "example.com",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
