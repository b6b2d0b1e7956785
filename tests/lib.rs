//! End-to-end tests live in `mesh/`. The library holds what the test
//! harnesses of the workspace share: ports for the processes they start,
//! and where the binaries they start are.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A binary of the workspace, built by `cargo build --workspace --bins`.
/// Cargo puts a test executable in `<target>/<profile>/deps/` and the
/// binaries of the same build in `<target>/<profile>/`: the executable's own
/// place follows `CARGO_TARGET_DIR`, `build.target-dir`, `--target` and the
/// profile exactly as cargo did (tests/binaries.py is the scripts' side).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let path = profile_dir(&exe).join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// `<target>/<profile>` of a test executable in `<target>/<profile>/deps/`.
fn profile_dir(exe: &Path) -> &Path {
    let dir = exe.parent().unwrap_or(exe);
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
}

/// A loopback port for a child process to listen on. It is free now, it
/// lies outside the kernel's ephemeral range, so no outgoing connection of
/// the tests can take it before the child binds it (a port 0 answer can be
/// taken that way, and was), and this process hands it out once.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = outside_ephemeral_range();
    let span = u32::from(high - low);
    // Test processes running at once start at different places.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + u16::try_from(offset).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

/// Ports the kernel does not pick for outgoing connections: below the
/// ephemeral range when it starts high (32768 by default), else above it.
fn outside_ephemeral_range() -> (u16, u16) {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        });
    match range {
        Some((first, _)) if first >= 21_000 => (20_000, first),
        Some((_, last)) if last <= 64_000 => (last + 1, u16::MAX),
        _ => (20_000, 32_768),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{free_port, profile_dir};

    #[test]
    fn binaries_are_found_beside_the_test_executable_wherever_cargo_builds() {
        // CARGO_TARGET_DIR=/elsewhere cargo test: the test runs from /elsewhere.
        assert_eq!(
            profile_dir(Path::new("/elsewhere/debug/deps/mesh-0123abcd")),
            Path::new("/elsewhere/debug")
        );
        assert_eq!(
            profile_dir(Path::new("/t/x86_64-unknown-linux-gnu/release/deps/it-1")),
            Path::new("/t/x86_64-unknown-linux-gnu/release")
        );
        // This very test: the workspace's binaries sit in the same profile dir.
        let exe = std::env::current_exe().unwrap();
        assert!(profile_dir(&exe).join("deps").is_dir());
    }

    #[test]
    fn ports_are_free_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        // An outgoing connection's local port is ephemeral: never one of ours.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let ephemeral = client.local_addr().unwrap().port();
        assert!(!ports.contains(&ephemeral));
        let (low, high) = super::outside_ephemeral_range();
        assert!(ports.iter().all(|p| (low..high).contains(p)));
        assert!(
            !(low..high).contains(&ephemeral),
            "{ephemeral} in {low}..{high}"
        );
    }
}
