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
//! - `ip6tables filter TOKENMESH_INBOUND` (from `INPUT`, where the namespace
//!   has IPv6): TCP to the application's ports from outside the pod is
//!   refused, since the sidecar is not reached over IPv6.
//!
//! Idempotent: `install` with the same flags changes nothing, with other
//! flags it brings the chains to the new rules; `remove` deletes exactly what
//! `install` added. It fails, with a message and a non-zero exit, rather than
//! leave a pod unprotected.

use std::{
    collections::BTreeSet,
    fmt,
    io::Write,
    net::Ipv4Addr,
    path::Path,
    process::{Command, ExitCode, Output},
    str::FromStr,
};

use clap::{ArgAction, Args, Parser, Subcommand, builder::BoolishValueParser};

const INBOUND: &str = "TOKENMESH_INBOUND";
const OUTBOUND: &str = "TOKENMESH_OUTBOUND";
/// DNS over TCP never goes to the sidecar: it proxies HTTP only.
const DNS: u16 = 53;
/// Seconds to wait for the xtables lock (iptables-legacy).
const LOCK_WAIT: &str = "10";
/// More jumps than this to one chain is not something `install` made.
const MAX_JUMPS: usize = 64;

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
    /// Exit 0 if the installed rules are exactly what the flags say, 1 (and
    /// what differs) otherwise.
    Check(RuleArgs),
    /// Remove the rules and chains of tokenmesh-capture, and nothing else.
    Remove(Backend),
}

#[derive(Args, Debug, Clone)]
struct Backend {
    /// The iptables command: iptables, iptables-nft, iptables-legacy or a
    /// path. Its ip6tables sibling (the same name with ip6tables) is used
    /// for IPv6.
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_IPTABLES",
        default_value = "iptables",
        value_name = "COMMAND"
    )]
    iptables: String,
}

#[derive(Args, Debug, Clone)]
struct RuleArgs {
    #[command(flatten)]
    backend: Backend,

    /// The application's TCP ports: connections to them are redirected to
    /// the sidecar's inbound listener.
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_INBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    inbound_ports: Ports,

    /// The port of the sidecar's inbound listener (--inbound-addr).
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_SIDECAR_INBOUND_PORT",
        default_value_t = 15006,
        value_name = "PORT"
    )]
    sidecar_inbound_port: u16,

    /// Also redirect TCP leaving the pod to the sidecar's outbound listener.
    /// (In the environment: true/false, 1/0, yes/no, on/off.)
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_OUTBOUND",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    outbound: bool,

    /// The port of the sidecar's outbound listener (--outbound-addr).
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_SIDECAR_OUTBOUND_PORT",
        default_value_t = 15001,
        value_name = "PORT"
    )]
    sidecar_outbound_port: u16,

    /// The user id the sidecar runs as: its traffic (to the token server,
    /// and the calls it forwards) is never redirected. Needed with
    /// --outbound.
    #[arg(long, env = "TOKENMESH_CAPTURE_SIDECAR_UID", value_name = "UID")]
    sidecar_uid: Option<u32>,

    /// Destination TCP ports that outbound capture leaves alone (TLS,
    /// databases, anything not plain HTTP).
    #[arg(
        long,
        visible_alias = "exclude-ports",
        env = "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    exclude_outbound_ports: Ports,

    /// Destination IPv4 addresses or CIDRs that outbound capture leaves
    /// alone (the token server, for applications that call it themselves).
    #[arg(
        long,
        visible_alias = "exclude-cidrs",
        env = "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_CIDRS",
        default_value = "",
        hide_default_value = true,
        value_name = "CIDRS"
    )]
    exclude_outbound_cidrs: Cidrs,
}

/// Comma-separated TCP ports, sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ports(Vec<u16>);

impl FromStr for Ports {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut ports = BTreeSet::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.parse::<u16>() {
                Ok(port) if port > 0 => ports.insert(port),
                _ => return Err(format!("`{item}` is not a TCP port (1-65535)")),
            };
        }
        Ok(Self(ports.into_iter().collect()))
    }
}

/// Comma-separated IPv4 addresses or CIDRs, as networks, sorted and
/// deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cidrs(Vec<(Ipv4Addr, u8)>);

impl FromStr for Cidrs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut cidrs = BTreeSet::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, len) = item.split_once('/').unwrap_or((item, "32"));
            let bad = || format!("`{item}` is not an IPv4 address or CIDR (like 10.96.0.0/12)");
            let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            cidrs.insert((Ipv4Addr::from(u32::from(addr) & mask), len));
        }
        Ok(Self(cidrs.into_iter().collect()))
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// One chain of ours, and where it is jumped to from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chain {
    family: Family,
    table: &'static str,
    name: &'static str,
    hook: &'static str,
}

const V4_INBOUND: Chain = Chain {
    family: Family::V4,
    table: "nat",
    name: INBOUND,
    hook: "PREROUTING",
};
const V4_OUTBOUND: Chain = Chain {
    family: Family::V4,
    table: "nat",
    name: OUTBOUND,
    hook: "OUTPUT",
};
const V6_INBOUND: Chain = Chain {
    family: Family::V6,
    table: "filter",
    name: INBOUND,
    hook: "INPUT",
};

type Rule = Vec<String>;
/// Each chain of ours and the rules it should hold; `None`: it should not exist.
type Plan = Vec<(Chain, Option<Vec<Rule>>)>;

fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

impl Chain {
    fn jump(&self) -> Rule {
        rule(&["-p", "tcp", "-j", self.name])
    }
}

/// What each of our chains should hold.
fn desired(args: &RuleArgs, ipv6: bool) -> Result<Plan, CaptureError> {
    let sidecar_ports = [args.sidecar_inbound_port, args.sidecar_outbound_port];
    if let Some(port) = args
        .inbound_ports
        .0
        .iter()
        .find(|p| sidecar_ports.contains(p))
    {
        return Err(CaptureError::Config(format!(
            "--inbound-ports lists {port}, a port of the sidecar itself: its requests would loop"
        )));
    }
    if args.inbound_ports.0.is_empty() && !args.outbound {
        return Err(CaptureError::Config(
            "nothing to capture: give --inbound-ports, --outbound or both".into(),
        ));
    }
    let inbound = (!args.inbound_ports.0.is_empty()).then(|| {
        let to = args.sidecar_inbound_port.to_string();
        args.inbound_ports
            .0
            .iter()
            .map(|port| {
                let port = port.to_string();
                rule(&[
                    "-p",
                    "tcp",
                    "--dport",
                    &port,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &to,
                ])
            })
            .collect::<Vec<_>>()
    });
    let outbound = if args.outbound {
        let uid = args.sidecar_uid.ok_or_else(|| {
            CaptureError::Config(
                "--outbound needs --sidecar-uid: the sidecar's own calls would loop back into it"
                    .into(),
            )
        })?;
        let mut rules = vec![
            rule(&["-o", "lo", "-j", "RETURN"]),
            rule(&[
                "-m",
                "owner",
                "--uid-owner",
                &uid.to_string(),
                "-j",
                "RETURN",
            ]),
            rule(&["-p", "tcp", "--dport", &DNS.to_string(), "-j", "RETURN"]),
        ];
        for (addr, len) in &args.exclude_outbound_cidrs.0 {
            rules.push(rule(&["-d", &format!("{addr}/{len}"), "-j", "RETURN"]));
        }
        for port in args.exclude_outbound_ports.0.iter().filter(|p| **p != DNS) {
            rules.push(rule(&[
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "-j",
                "RETURN",
            ]));
        }
        let to = args.sidecar_outbound_port.to_string();
        rules.push(rule(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", &to]));
        Some(rules)
    } else {
        None
    };
    let mut chains = vec![(V4_INBOUND, inbound), (V4_OUTBOUND, outbound)];
    if ipv6 {
        let guard = (!args.inbound_ports.0.is_empty()).then(|| {
            args.inbound_ports
                .0
                .iter()
                .map(|port| {
                    let port = port.to_string();
                    rule(&[
                        "!",
                        "-i",
                        "lo",
                        "-p",
                        "tcp",
                        "--dport",
                        &port,
                        "-j",
                        "REJECT",
                        "--reject-with",
                        "tcp-reset",
                    ])
                })
                .collect::<Vec<_>>()
        });
        chains.push((V6_INBOUND, guard));
    }
    Ok(chains)
}

/// Whether this network namespace has IPv6 (then IPv6 is guarded too).
fn has_ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// The iptables and ip6tables commands.
struct Tables {
    v4: String,
    v6: String,
}

impl Tables {
    fn new(iptables: &str) -> Self {
        // iptables-legacy -> ip6tables-legacy, /usr/sbin/iptables -> /usr/sbin/ip6tables.
        let v6 = match iptables.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/{}", name.replacen("iptables", "ip6tables", 1)),
            None => iptables.replacen("iptables", "ip6tables", 1),
        };
        Self {
            v4: iptables.to_owned(),
            v6,
        }
    }

    fn command(&self, family: Family) -> &str {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    fn output(&self, family: Family, args: &[String]) -> Result<(String, Output), CaptureError> {
        let command = self.command(family);
        let shown = format!("{command} {}", args.join(" "));
        let output = Command::new(command)
            .args(args)
            .output()
            .map_err(|source| CaptureError::NoIptables {
                command: shown.clone(),
                source,
            })?;
        Ok((shown, output))
    }

    /// Runs a command that must succeed; its standard output.
    fn must(&self, family: Family, args: &[String]) -> Result<String, CaptureError> {
        let (command, output) = self.output(family, args)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(CaptureError::Failed {
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Runs a test (`-C`, `-S CHAIN`): whether it succeeded.
    fn test(&self, family: Family, args: &[String]) -> Result<bool, CaptureError> {
        Ok(self.output(family, args)?.1.status.success())
    }

    /// The version, and proof that the table can be read (permissions).
    fn preflight(&self, family: Family, table: &str) -> Result<String, CaptureError> {
        let version = self.must(family, &rule(&["--version"]))?;
        self.must(family, &rule(&["-w", LOCK_WAIT, "-t", table, "-S"]))?;
        Ok(version.trim().to_owned())
    }
}

/// `-t TABLE OP TARGET RULE...`, waiting for the xtables lock.
fn argv(chain: Chain, op: &str, target: &str, spec: &[String]) -> Vec<String> {
    let mut args = rule(&["-w", LOCK_WAIT, "-t", chain.table, op, target]);
    args.extend(spec.iter().cloned());
    args
}

/// What is installed of one chain.
struct State {
    exists: bool,
    /// The chain holds exactly the rules wanted (meaningless if none are).
    rules_match: bool,
    jumped_to: bool,
}

fn state(tables: &Tables, chain: Chain, rules: Option<&[Rule]>) -> Result<State, CaptureError> {
    let f = chain.family;
    let exists = tables.test(f, &argv(chain, "-S", chain.name, &[]))?;
    let mut rules_match = false;
    if let (true, Some(rules)) = (exists, rules) {
        let listed = tables.must(f, &argv(chain, "-S", chain.name, &[]))?;
        let count = listed.lines().filter(|l| l.starts_with("-A ")).count();
        rules_match = count == rules.len();
        for r in rules {
            if !rules_match {
                break;
            }
            rules_match = tables.test(f, &argv(chain, "-C", chain.name, r))?;
        }
    }
    let jumped_to = tables.test(f, &argv(chain, "-C", chain.hook, &chain.jump()))?;
    Ok(State {
        exists,
        rules_match,
        jumped_to,
    })
}

/// Brings one chain to `rules`; whether anything changed.
fn reconcile(tables: &Tables, chain: Chain, rules: Option<&[Rule]>) -> Result<bool, CaptureError> {
    let f = chain.family;
    let current = state(tables, chain, rules)?;
    let mut changed = false;
    match rules {
        None => {
            // The jump first, so nothing runs into a chain being emptied.
            let mut jumped_to = current.jumped_to;
            for _ in 0..MAX_JUMPS {
                if !jumped_to {
                    break;
                }
                tables.must(f, &argv(chain, "-D", chain.hook, &chain.jump()))?;
                changed = true;
                jumped_to = tables.test(f, &argv(chain, "-C", chain.hook, &chain.jump()))?;
            }
            if current.exists {
                tables.must(f, &argv(chain, "-F", chain.name, &[]))?;
                tables.must(f, &argv(chain, "-X", chain.name, &[]))?;
                changed = true;
            }
        }
        Some(rules) => {
            if !current.exists {
                tables.must(f, &argv(chain, "-N", chain.name, &[]))?;
            }
            if !current.rules_match {
                tables.must(f, &argv(chain, "-F", chain.name, &[]))?;
                for r in rules {
                    tables.must(f, &argv(chain, "-A", chain.name, r))?;
                }
                changed = true;
            }
            if !current.jumped_to {
                tables.must(f, &argv(chain, "-A", chain.hook, &chain.jump()))?;
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// The rules of ours as iptables lists them, one command line each.
fn listing(tables: &Tables, chain: Chain) -> Result<Vec<String>, CaptureError> {
    let f = chain.family;
    let command = tables.command(f);
    let prefix = |line: &str| format!("{command} -t {} {line}", chain.table);
    let mut lines = Vec::new();
    if tables.test(f, &argv(chain, "-S", chain.name, &[]))? {
        let listed = tables.must(f, &argv(chain, "-S", chain.name, &[]))?;
        lines.extend(listed.lines().map(prefix));
    }
    let hook = tables.must(f, &argv(chain, "-S", chain.hook, &[]))?;
    let target = format!("-j {}", chain.name);
    lines.extend(
        hook.lines()
            .filter(|l| l.ends_with(&target) || l.contains(&format!("{target} ")))
            .map(prefix),
    );
    Ok(lines)
}

/// A sentence per chain saying what it does, for people.
struct Summary<'a>(&'a RuleArgs, bool);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Summary(args, ipv6) = *self;
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if args.inbound_ports.0.is_empty() {
            writeln!(f, "inbound: not captured (no --inbound-ports)")?;
        } else {
            writeln!(
                f,
                "inbound: TCP to port(s) {} is redirected to the sidecar on port {}",
                list(&args.inbound_ports.0),
                args.sidecar_inbound_port
            )?;
            if ipv6 {
                writeln!(
                    f,
                    "inbound IPv6: TCP to port(s) {} from outside the pod is refused",
                    list(&args.inbound_ports.0)
                )?;
            }
        }
        if args.outbound {
            let mut except = vec![
                format!("uid {}", args.sidecar_uid.unwrap_or_default()),
                "loopback".to_owned(),
                format!("port {DNS} (DNS)"),
            ];
            except.extend(
                args.exclude_outbound_cidrs
                    .0
                    .iter()
                    .map(|(a, l)| format!("{a}/{l}")),
            );
            if !args.exclude_outbound_ports.0.is_empty() {
                except.push(format!("port(s) {}", list(&args.exclude_outbound_ports.0)));
            }
            writeln!(
                f,
                "outbound: TCP is redirected to the sidecar on port {}, except {}",
                args.sidecar_outbound_port,
                except.join(", ")
            )
        } else {
            writeln!(f, "outbound: not captured (no --outbound)")
        }
    }
}

/// The report of a subcommand, and whether it found what it wanted.
type Report = (bool, String);

fn install(args: &RuleArgs) -> Result<Report, CaptureError> {
    let ipv6 = has_ipv6();
    let chains = desired(args, ipv6)?;
    let tables = Tables::new(&args.backend.iptables);
    let version = tables.preflight(Family::V4, "nat")?;
    if ipv6 {
        tables.preflight(Family::V6, "filter")?;
    }
    let mut changed = false;
    for (chain, rules) in &chains {
        changed |= reconcile(&tables, *chain, rules.as_deref())?;
    }
    let mut out = format!(
        "tokenmesh-capture: {} ({version})\n{}",
        if changed {
            "installed"
        } else {
            "already installed, nothing changed"
        },
        Summary(args, ipv6)
    );
    for (chain, rules) in &chains {
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
    let chains = desired(args, ipv6)?;
    let tables = Tables::new(&args.backend.iptables);
    tables.preflight(Family::V4, "nat")?;
    if ipv6 {
        tables.preflight(Family::V6, "filter")?;
    }
    let mut problems = Vec::new();
    for (chain, rules) in &chains {
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
                problems.push(format!("{name}: its rules differ from the flags"));
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
            Summary(args, ipv6)
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
    tables.preflight(Family::V4, "nat")?;
    let mut chains = vec![V4_INBOUND, V4_OUTBOUND];
    if ipv6 {
        tables.preflight(Family::V6, "filter")?;
        chains.push(V6_INBOUND);
    }
    let mut changed = false;
    for chain in chains {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RuleArgs {
        let cli = Cli::try_parse_from(
            ["tokenmesh-capture", "install"]
                .into_iter()
                .chain(extra.iter().copied()),
        )
        .unwrap();
        match cli.command {
            Action::Install(args) => args,
            other => panic!("{other:?}"),
        }
    }

    fn joined(rules: &Option<Vec<Rule>>) -> Vec<String> {
        rules
            .iter()
            .flatten()
            .map(|r| r.join(" "))
            .collect::<Vec<_>>()
    }

    #[test]
    fn lists_are_sorted_deduplicated_and_checked() {
        assert_eq!(
            " 9090, 8080,,8080 ".parse::<Ports>().unwrap(),
            Ports(vec![8080, 9090])
        );
        assert_eq!("".parse::<Ports>().unwrap(), Ports(vec![]));
        assert!("0".parse::<Ports>().is_err());
        assert!("http".parse::<Ports>().is_err());
        assert_eq!(
            "10.1.2.3/8, 192.0.2.7".parse::<Cidrs>().unwrap(),
            Cidrs(vec![
                (Ipv4Addr::new(10, 0, 0, 0), 8),
                (Ipv4Addr::new(192, 0, 2, 7), 32)
            ])
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidrs>().unwrap().0,
            vec![(Ipv4Addr::UNSPECIFIED, 0)]
        );
        assert!("fd00::/8".parse::<Cidrs>().is_err());
        assert!("10.0.0.0/33".parse::<Cidrs>().is_err());
    }

    #[test]
    fn inbound_rules_redirect_each_port_to_the_sidecar() {
        let chains = desired(&args(&["--inbound-ports", "9090,8080"]), false).unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].0, V4_INBOUND);
        assert_eq!(
            joined(&chains[0].1),
            [
                "-p tcp --dport 8080 -j REDIRECT --to-ports 15006",
                "-p tcp --dport 9090 -j REDIRECT --to-ports 15006"
            ]
        );
        assert_eq!(chains[1], (V4_OUTBOUND, None));
    }

    #[test]
    fn outbound_rules_exclude_the_sidecar_loopback_dns_and_what_is_listed() {
        let chains = desired(
            &args(&[
                "--outbound",
                "--sidecar-uid",
                "1337",
                "--sidecar-outbound-port",
                "15009",
                "--exclude-outbound-ports",
                "5432,53",
                "--exclude-cidrs",
                "10.96.0.10",
            ]),
            true,
        )
        .unwrap();
        assert_eq!(chains[0], (V4_INBOUND, None));
        assert_eq!(
            joined(&chains[1].1),
            [
                "-o lo -j RETURN",
                "-m owner --uid-owner 1337 -j RETURN",
                "-p tcp --dport 53 -j RETURN",
                "-d 10.96.0.10/32 -j RETURN",
                "-p tcp --dport 5432 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 15009",
            ]
        );
        assert_eq!(chains[2], (V6_INBOUND, None));
    }

    #[test]
    fn ipv6_connections_to_the_application_are_refused() {
        let chains = desired(&args(&["--inbound-ports", "8080"]), true).unwrap();
        assert_eq!(chains[2].0, V6_INBOUND);
        assert_eq!(
            joined(&chains[2].1),
            ["! -i lo -p tcp --dport 8080 -j REJECT --reject-with tcp-reset"]
        );
    }

    #[test]
    fn settings_that_cannot_protect_the_pod_are_refused() {
        for bad in [
            &["--outbound"][..],
            &[][..],
            &["--inbound-ports", "15006"][..],
            &["--inbound-ports", "8080,15001"][..],
        ] {
            assert!(
                matches!(desired(&args(bad), true), Err(CaptureError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_ip6tables_command_follows_the_iptables_one() {
        for (v4, v6) in [
            ("iptables", "ip6tables"),
            ("iptables-legacy", "ip6tables-legacy"),
            ("/usr/sbin/iptables-nft", "/usr/sbin/ip6tables-nft"),
        ] {
            assert_eq!(Tables::new(v4).v6, v6);
        }
    }

    #[test]
    fn a_missing_iptables_is_an_error_that_says_so() {
        let tables = Tables::new("/nonexistent/iptables");
        let err = tables.preflight(Family::V4, "nat").unwrap_err();
        assert!(matches!(err, CaptureError::NoIptables { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/iptables"), "{err}");
    }
}
