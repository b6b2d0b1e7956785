//! Connections that `tokenmesh-capture`'s iptables rules redirected to a
//! listener of the sidecar: the destination they were originally for
//! (`SO_ORIGINAL_DST`, from the kernel's connection tracking).

use std::net::SocketAddr;

/// The original destination of a connection redirected to one of the
/// sidecar's listeners; a request extension, set per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst(pub SocketAddr);

/// The destination `stream` was originally for, if it was redirected: `None`
/// when it arrived at the listener's own address (no redirect: explicit-proxy
/// mode) or when the kernel does not track it.
pub fn original_destination(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = canonical(stream.local_addr().ok()?);
    let original = canonical(lookup(stream, local)?);
    (original != local).then_some(original)
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(target_os = "linux")]
fn lookup(stream: &tokio::net::TcpStream, local: SocketAddr) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use nix::sys::socket::{getsockopt, sockopt};

    match local {
        SocketAddr::V4(_) => {
            let sin = getsockopt(stream, sockopt::OriginalDst).ok()?;
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                u16::from_be(sin.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst).ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                0,
                sin6.sin6_scope_id,
            )))
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lookup(_stream: &tokio::net::TcpStream, _local: SocketAddr) -> Option<SocketAddr> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:8080".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:8080".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:8080".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await
        });
        let _client = client.unwrap();
        let (stream, _) = accepted.unwrap();
        assert_eq!(original_destination(&stream), None);
    }
}
