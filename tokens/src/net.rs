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
            // Bytes, not str slices: a non-ASCII name has no char boundary
            // where the suffix would start.
            let name = bare.as_bytes();
            let suffix = b".localhost";
            name.eq_ignore_ascii_case(b"localhost")
                || (name.len() >= suffix.len()
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
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
            "A.LocalHost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "10.0.0.7",
            "[fd00::1]",
            "localhost.example.com",
            "example.com",
            "xlocalhost",
            "é.localhosté",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
