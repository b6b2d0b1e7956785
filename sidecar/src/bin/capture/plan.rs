//! What each chain of ours should hold, from the settings alone (no I/O).
//!
//! IPv4 is captured: inbound to the sidecar's inbound listener, outbound to
//! its outbound listener. The sidecar listens on IPv4 only, so IPv6 is
//! refused instead of let around it: TCP to the application's ports from
//! outside the pod, and (with outbound capture) TCP leaving the pod, with
//! the same exemptions as IPv4 outbound capture. A client that gets a reset
//! over IPv6 tries the destination's IPv4 address next, which is captured.

use crate::{CaptureError, settings::RuleArgs};

pub const INBOUND: &str = "TOKENMESH_INBOUND";
pub const OUTBOUND: &str = "TOKENMESH_OUTBOUND";
/// DNS over TCP never goes to the sidecar: it proxies HTTP only.
pub const DNS: u16 = 53;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One chain of ours, and where it is jumped to from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    pub family: Family,
    pub table: &'static str,
    pub name: &'static str,
    pub hook: &'static str,
}

pub const V4_INBOUND: Chain = Chain {
    family: Family::V4,
    table: "nat",
    name: INBOUND,
    hook: "PREROUTING",
};
pub const V4_OUTBOUND: Chain = Chain {
    family: Family::V4,
    table: "nat",
    name: OUTBOUND,
    hook: "OUTPUT",
};
pub const V6_INBOUND: Chain = Chain {
    family: Family::V6,
    table: "filter",
    name: INBOUND,
    hook: "INPUT",
};
pub const V6_OUTBOUND: Chain = Chain {
    family: Family::V6,
    table: "filter",
    name: OUTBOUND,
    hook: "OUTPUT",
};

/// Every chain of ours, IPv6 ones only where the namespace has IPv6.
pub fn all_chains(ipv6: bool) -> Vec<Chain> {
    let mut chains = vec![V4_INBOUND, V4_OUTBOUND];
    if ipv6 {
        chains.extend([V6_INBOUND, V6_OUTBOUND]);
    }
    chains
}

/// A rule's arguments after `-A CHAIN`.
pub type Rule = Vec<String>;
/// Each chain of ours and the rules it should hold, in order; `None`: it
/// should not exist.
pub type Plan = Vec<(Chain, Option<Vec<Rule>>)>;

pub fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

impl Chain {
    pub fn jump(&self) -> Rule {
        rule(&["-p", "tcp", "-j", self.name])
    }
}

/// What each chain of ours should hold.
pub fn desired(args: &RuleArgs, ipv6: bool) -> Result<Plan, CaptureError> {
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
    let uid = match (args.outbound, args.sidecar_uid) {
        (false, _) => None,
        (true, Some(uid)) => Some(uid),
        (true, None) => {
            return Err(CaptureError::Config(
                "--outbound needs --sidecar-uid: the sidecar's own calls would loop back into it"
                    .into(),
            ));
        }
    };
    let inbound = |target: &[&str], from_outside: bool| {
        (!args.inbound_ports.0.is_empty()).then(|| {
            args.inbound_ports
                .0
                .iter()
                .map(|port| {
                    let mut r = if from_outside {
                        rule(&["!", "-i", "lo"])
                    } else {
                        Vec::new()
                    };
                    r.extend(rule(&["-p", "tcp", "--dport", &port.to_string()]));
                    r.extend(rule(target));
                    r
                })
                .collect::<Vec<_>>()
        })
    };
    let outbound = |family: Family, target: &[&str]| {
        uid.map(|uid| {
            let mut rules = exemptions(args, uid, family);
            rules.push([rule(&["-p", "tcp"]), rule(target)].concat());
            rules
        })
    };
    let to_inbound = args.sidecar_inbound_port.to_string();
    let to_outbound = args.sidecar_outbound_port.to_string();
    let reset = ["-j", "REJECT", "--reject-with", "tcp-reset"];
    // Only a connection's first packet (SYN without ACK), the one nat sees:
    // the answers of connections made to the pod leave by OUTPUT too.
    let refuse_new = [&["--tcp-flags", "FIN,SYN,RST,ACK", "SYN"][..], &reset].concat();
    let mut plan = vec![
        (
            V4_INBOUND,
            inbound(&["-j", "REDIRECT", "--to-ports", &to_inbound], false),
        ),
        (
            V4_OUTBOUND,
            outbound(Family::V4, &["-j", "REDIRECT", "--to-ports", &to_outbound]),
        ),
    ];
    if ipv6 {
        plan.push((V6_INBOUND, inbound(&reset, true)));
        plan.push((V6_OUTBOUND, outbound(Family::V6, &refuse_new)));
    }
    Ok(plan)
}

/// Outbound TCP that is never captured, first in the outbound chain:
/// loopback, the sidecar's own, DNS and what is excluded.
fn exemptions(args: &RuleArgs, uid: u32, family: Family) -> Vec<Rule> {
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
    for net in args.exclude_outbound_cidrs.of(family) {
        rules.push(rule(&["-d", &net.to_string(), "-j", "RETURN"]));
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
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::parse;

    fn joined(rules: &Option<Vec<Rule>>) -> Vec<String> {
        rules
            .iter()
            .flatten()
            .map(|r| r.join(" "))
            .collect::<Vec<_>>()
    }

    #[test]
    fn inbound_rules_redirect_each_port_to_the_sidecar() {
        let plan = desired(&parse(&["--inbound-ports", "9090,8080"]), false).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].0, V4_INBOUND);
        assert_eq!(
            joined(&plan[0].1),
            [
                "-p tcp --dport 8080 -j REDIRECT --to-ports 15006",
                "-p tcp --dport 9090 -j REDIRECT --to-ports 15006"
            ]
        );
        assert_eq!(plan[1], (V4_OUTBOUND, None));
    }

    const OUTBOUND_FLAGS: &[&str] = &[
        "--outbound",
        "--sidecar-uid",
        "1337",
        "--sidecar-outbound-port",
        "15009",
        "--exclude-outbound-ports",
        "5432,53",
        "--exclude-cidrs",
        "10.96.0.10,fd00:10:96::/112",
    ];

    #[test]
    fn outbound_rules_exclude_the_sidecar_loopback_dns_and_what_is_listed() {
        let plan = desired(&parse(OUTBOUND_FLAGS), true).unwrap();
        assert_eq!(plan[0], (V4_INBOUND, None));
        assert_eq!(plan[1].0, V4_OUTBOUND);
        assert_eq!(
            joined(&plan[1].1),
            [
                "-o lo -j RETURN",
                "-m owner --uid-owner 1337 -j RETURN",
                "-p tcp --dport 53 -j RETURN",
                "-d 10.96.0.10/32 -j RETURN",
                "-p tcp --dport 5432 -j RETURN",
                "-p tcp -j REDIRECT --to-ports 15009",
            ]
        );
        assert_eq!(plan[2], (V6_INBOUND, None));
    }

    #[test]
    fn outbound_ipv6_is_refused_with_the_same_exemptions_and_its_own_cidrs() {
        let plan = desired(&parse(OUTBOUND_FLAGS), true).unwrap();
        assert_eq!(plan[3].0, V6_OUTBOUND);
        assert_eq!(
            joined(&plan[3].1),
            [
                "-o lo -j RETURN",
                "-m owner --uid-owner 1337 -j RETURN",
                "-p tcp --dport 53 -j RETURN",
                "-d fd00:10:96::/112 -j RETURN",
                "-p tcp --dport 5432 -j RETURN",
                "-p tcp --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset",
            ]
        );
        // Without IPv6 in the namespace there is nothing to refuse.
        assert_eq!(desired(&parse(OUTBOUND_FLAGS), false).unwrap().len(), 2);
        // Without outbound capture nothing outbound is refused.
        let inbound_only = desired(&parse(&["--inbound-ports", "8080"]), true).unwrap();
        assert_eq!(inbound_only[3], (V6_OUTBOUND, None));
    }

    #[test]
    fn ipv6_connections_to_the_application_are_refused() {
        let plan = desired(&parse(&["--inbound-ports", "8080"]), true).unwrap();
        assert_eq!(plan[2].0, V6_INBOUND);
        assert_eq!(
            joined(&plan[2].1),
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
                matches!(desired(&parse(bad), true), Err(CaptureError::Config(_))),
                "{bad:?}"
            );
        }
    }
}
