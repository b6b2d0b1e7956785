//! What a revocation event costs a sidecar holding ~130k revocations, before
//! (a map rescanned whole on every event past 100k) and after (`RevokedSet`,
//! ordered by expiry); what a starting sidecar pays to take them in; and the
//! memory an entry takes. Figures for docs/performance.md:
//!
//!     cargo run --release -p tokenmesh-tokens --example revocation_cost

// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_methods)]

use std::{
    collections::HashMap,
    hint::black_box,
    time::{Duration, Instant},
};

use tokenmesh_tokens::revoked::RevokedSet;

const KEPT: usize = 130_000;
const EVENTS: usize = 2_000;
const NOW: u64 = 1_800_000_000;

/// A jti as the token server makes them (22 base64url characters).
fn id(n: usize) -> String {
    format!("jti-{n:018}")
}

/// The sidecar's map before: past 100k entries every event rescanned it.
fn old_insert(map: &mut HashMap<String, u64>, id: String, until: u64, now: u64) {
    if map.len() > 100_000 {
        map.retain(|_, at| *at > now);
    }
    map.insert(id, until);
}

fn per_event(total: Duration, events: usize) -> String {
    format!("{:.2} us", total.as_secs_f64() * 1e6 / events as f64)
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    // Tokens live an hour; revocations arrive over it, none expired yet.
    let until = |n: usize| NOW + 60 + (n % 3_600) as u64;

    // First, while the heap has nothing freed to reuse.
    let before = rss();
    let mut sized = RevokedSet::new(250_000);
    for n in 0..250_000 {
        sized.insert(&id(n), until(n), NOW);
    }
    let bytes = rss().saturating_sub(before) / 250_000;
    drop(black_box(sized));

    let mut old = HashMap::new();
    for n in 0..KEPT {
        old.insert(id(n), until(n));
    }
    let started = Instant::now();
    for n in KEPT..KEPT + EVENTS {
        old_insert(&mut old, id(n), until(n), NOW);
    }
    let old_event = started.elapsed();

    let mut set = RevokedSet::new(1_000_000);
    for n in 0..KEPT {
        set.insert(&id(n), until(n), NOW);
    }
    let started = Instant::now();
    for n in KEPT..KEPT + EVENTS {
        set.insert(&id(n), until(n), NOW);
    }
    let new_event = started.elapsed();
    // Time moves on: a minute of revocations expires at the next event.
    let started = Instant::now();
    let expired = set.insert(&id(0), NOW + 7_200, NOW + 120).expired;
    let purge = started.elapsed();
    black_box((&old, &set));

    // A starting sidecar: 130k events one by one, before and after.
    let started = Instant::now();
    let mut replay = HashMap::new();
    for n in 0..KEPT {
        old_insert(&mut replay, id(n), until(n), NOW);
    }
    let old_start = started.elapsed();
    let started = Instant::now();
    let mut fresh = RevokedSet::new(1_000_000);
    for n in 0..KEPT {
        fresh.insert(&id(n), until(n), NOW);
    }
    let new_start = started.elapsed();
    black_box((&replay, &fresh));

    println!(
        "| with {KEPT} revocations kept | before (map, rescanned) | after (ordered by expiry) |"
    );
    println!("|---|---|---|");
    println!(
        "| one event | {} | {} |",
        per_event(old_event, EVENTS),
        per_event(new_event, EVENTS)
    );
    println!(
        "| {KEPT} events from the start | {:.0} ms | {:.0} ms |",
        old_start.as_secs_f64() * 1e3,
        new_start.as_secs_f64() * 1e3
    );
    println!(
        "\none event that also forgets {expired} expired ids: {:.2} ms; memory: about {bytes} bytes per id",
        purge.as_secs_f64() * 1e3
    );
}
