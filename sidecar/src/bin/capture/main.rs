//! `tokenmesh-capture`: the init step that makes every request to a protected
//! pod pass through its sidecar. It installs iptables rules in the current
//! network namespace (the pod's), in chains of its own:
//!
//! - `nat TOKENMESH_INBOUND` (from `PREROUTING`): TCP to the application's
//!   ports is redirected to the sidecar's inbound listener, which forwards to
//!   the application on the original port;
//! - `nat TOKENMESH_OUTBOUND` (from `OUTPUT`, with `--outbound`): TCP leaving
//!   the pod is redirected to the sidecar's outbound listener, which recovers
//!   the original destination; except the sidecar's own traffic (its uid),
//!   loopback, DNS, and the ports and CIDRs excluded;
//! - `ip6tables filter TOKENMESH_INBOUND` (from `INPUT`) and
//!   `TOKENMESH_OUTBOUND` (from `OUTPUT`, with `--outbound`), where the
//!   namespace has IPv6: the same TCP is refused, since the sidecar is not
//!   reached over IPv6 ([`plan`]).
//!
//! Idempotent: `install` with the same flags changes nothing, with other
//! flags (or rules changed by hand, in any order) it brings the chains to the
//! planned rules; `remove` deletes exactly what `install` added. It fails,
//! with a message and a non-zero exit, rather than leave a pod unprotected.

mod chains;
mod iptables;
mod plan;
mod settings;
mod summary;

use std::{io::Write, path::Path, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    chains::{listing, reconcile, state},
    iptables::Tables,
    plan::{all_chains, desired},
    settings::{Backend, RuleArgs},
    summary::Summary,
};

/// Installs, checks or removes the iptables rules that send a pod's traffic
/// through its tokenmesh sidecar.
///
/// Runs in the pod's network namespace (the injection webhook adds it as an
/// init container with the NET_ADMIN and NET_RAW capabilities). Every flag is
/// also a TOKENMESH_CAPTURE_* environment variable; lists are comma-separated.
#[derive(Parser, Debug)]
#[command(name = "tokenmesh-capture", version)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Install the rules, or bring installed ones to what the flags say;
    /// prints what is installed.
    Install(RuleArgs),
    /// Exit 0 if the installed rules are exactly what the flags say, in
    /// order, 1 (and what differs) otherwise.
    Check(RuleArgs),
    /// Remove the rules and chains of tokenmesh-capture, and nothing else.
    Remove(Backend),
}

#[derive(Debug, thiserror::Error)]
enum CaptureError {
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("cannot run `{command}`: {source} (is the iptables package installed in this image?)")]
    NoIptables {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Whether this network namespace has IPv6 (then IPv6 is refused).
fn has_ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// The report of a subcommand, and whether it found what it wanted.
type Report = (bool, String);

fn install(args: &RuleArgs) -> Result<Report, CaptureError> {
    let ipv6 = has_ipv6();
    let plan = desired(args, ipv6)?;
    let tables = Tables::new(&args.backend.iptables);
    let version = tables.preflight_all(ipv6)?;
    let mut changed = false;
    for (chain, rules) in &plan {
        changed |= reconcile(&tables, *chain, rules.as_deref())?;
    }
    let mut out = format!(
        "tokenmesh-capture: {} ({version})\n{}",
        if changed {
            "installed"
        } else {
            "already installed, nothing changed"
        },
        Summary { args, ipv6 }
    );
    for (chain, rules) in &plan {
        if rules.is_some() {
            for line in listing(&tables, *chain)? {
                out += &format!("  {line}\n");
            }
        }
    }
    Ok((true, out))
}

fn check(args: &RuleArgs) -> Result<Report, CaptureError> {
    let ipv6 = has_ipv6();
    let plan = desired(args, ipv6)?;
    let tables = Tables::new(&args.backend.iptables);
    tables.preflight_all(ipv6)?;
    let mut problems = Vec::new();
    for (chain, rules) in &plan {
        let name = format!(
            "{} {} {}",
            tables.command(chain.family),
            chain.table,
            chain.name
        );
        let current = state(&tables, *chain, rules.as_deref())?;
        match rules {
            Some(_) if !current.exists => problems.push(format!("{name}: missing")),
            Some(_) if !current.rules_match => {
                problems.push(format!(
                    "{name}: its rules or their order differ from the flags"
                ));
            }
            None if current.exists => problems.push(format!("{name}: present, not wanted")),
            _ => {}
        }
        match (rules.is_some(), current.jumped_to) {
            (true, false) => problems.push(format!("{name}: not jumped to from {}", chain.hook)),
            (false, true) => problems.push(format!("{name}: jumped to from {}", chain.hook)),
            _ => {}
        }
    }
    let mut out = String::new();
    if problems.is_empty() {
        out = format!(
            "tokenmesh-capture: installed as the flags say\n{}",
            Summary { args, ipv6 }
        );
    }
    for problem in &problems {
        out += &format!("tokenmesh-capture: {problem}\n");
    }
    Ok((problems.is_empty(), out))
}

fn remove(backend: &Backend) -> Result<Report, CaptureError> {
    let ipv6 = has_ipv6();
    let tables = Tables::new(&backend.iptables);
    tables.preflight_all(ipv6)?;
    let mut changed = false;
    for chain in all_chains(ipv6) {
        changed |= reconcile(&tables, chain, None)?;
    }
    let done = if changed {
        "removed"
    } else {
        "nothing to remove"
    };
    Ok((true, format!("tokenmesh-capture: {done}\n")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Action::Install(args) => install(args),
        Action::Check(args) => check(args),
        Action::Remove(backend) => remove(backend),
    };
    // What was done is done: a closed stdout or stderr changes nothing.
    match result {
        Ok((ok, report)) => {
            let _ = std::io::stdout().write_all(report.as_bytes());
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            let mut message = format!("tokenmesh-capture: error: {err}\n");
            if let (Action::Install(_), false) =
                (&cli.command, matches!(err, CaptureError::Config(_)))
            {
                message += "tokenmesh-capture: the traffic capture is not installed, so the pod must not start: \
                     this step needs the iptables commands and the NET_ADMIN and NET_RAW capabilities \
                     in the pod's network namespace\n";
            }
            let _ = std::io::stderr().write_all(message.as_bytes());
            ExitCode::FAILURE
        }
    }
}
