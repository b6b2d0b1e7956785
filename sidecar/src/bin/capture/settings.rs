//! The settings of `tokenmesh-capture`: its flags, each also a
//! `TOKENMESH_CAPTURE_*` environment variable, and the lists they hold.

use std::{collections::BTreeSet, net::IpAddr, str::FromStr};

use clap::{ArgAction, Args, builder::BoolishValueParser};
use ipnet::IpNet;

use crate::plan::Family;

#[derive(Args, Debug, Clone)]
pub struct Backend {
    /// The iptables command: iptables, iptables-nft, iptables-legacy or a
    /// path. Its ip6tables sibling (the same name with ip6tables) is used
    /// for IPv6.
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_IPTABLES",
        default_value = "iptables",
        value_name = "COMMAND"
    )]
    pub iptables: String,
}

#[derive(Args, Debug, Clone)]
pub struct RuleArgs {
    #[command(flatten)]
    pub backend: Backend,

    /// The application's TCP ports: connections to them are redirected to
    /// the sidecar's inbound listener.
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_INBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub inbound_ports: Ports,

    /// The port of the sidecar's inbound listener (--inbound-addr).
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_SIDECAR_INBOUND_PORT",
        default_value_t = 15006,
        value_name = "PORT"
    )]
    pub sidecar_inbound_port: u16,

    /// Also redirect TCP leaving the pod to the sidecar's outbound listener
    /// (IPv4), and refuse it over IPv6. (In the environment: true/false,
    /// 1/0, yes/no, on/off.)
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_OUTBOUND",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub outbound: bool,

    /// The port of the sidecar's outbound listener (--outbound-addr).
    #[arg(
        long,
        env = "TOKENMESH_CAPTURE_SIDECAR_OUTBOUND_PORT",
        default_value_t = 15001,
        value_name = "PORT"
    )]
    pub sidecar_outbound_port: u16,

    /// The user id the sidecar runs as: its traffic (to the token server,
    /// and the calls it forwards) is never redirected. Needed with
    /// --outbound.
    #[arg(long, env = "TOKENMESH_CAPTURE_SIDECAR_UID", value_name = "UID")]
    pub sidecar_uid: Option<u32>,

    /// Destination TCP ports that outbound capture leaves alone (TLS,
    /// databases, anything not plain HTTP), over IPv4 and IPv6.
    #[arg(
        long,
        visible_alias = "exclude-ports",
        env = "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_PORTS",
        default_value = "",
        hide_default_value = true,
        value_name = "PORTS"
    )]
    pub exclude_outbound_ports: Ports,

    /// Destination IPv4 or IPv6 addresses or CIDRs that outbound capture
    /// leaves alone (the token server, for applications that call it
    /// themselves).
    #[arg(
        long,
        visible_alias = "exclude-cidrs",
        env = "TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_CIDRS",
        default_value = "",
        hide_default_value = true,
        value_name = "CIDRS"
    )]
    pub exclude_outbound_cidrs: Cidrs,
}

/// Comma-separated TCP ports, sorted and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

impl FromStr for Ports {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut ports = BTreeSet::new();
        for item in items(text) {
            match item.parse::<u16>() {
                Ok(port) if port > 0 => ports.insert(port),
                _ => return Err(format!("`{item}` is not a TCP port (1-65535)")),
            };
        }
        Ok(Self(ports.into_iter().collect()))
    }
}

/// Comma-separated IPv4 or IPv6 addresses or CIDRs, as networks (host bits
/// cleared), sorted (IPv4 first) and deduplicated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(pub Vec<IpNet>);

impl Cidrs {
    /// The networks of one address family.
    pub fn of(&self, family: Family) -> impl Iterator<Item = &IpNet> {
        self.0.iter().filter(move |net| match net {
            IpNet::V4(_) => family == Family::V4,
            IpNet::V6(_) => family == Family::V6,
        })
    }
}

impl FromStr for Cidrs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut cidrs = BTreeSet::new();
        for item in items(text) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!(
                        "`{item}` is not an IP address or CIDR (like 10.96.0.0/12 or fd00:10:96::/112)"
                    )
                })?,
            };
            cidrs.insert(net.trunc());
        }
        Ok(Self(cidrs.into_iter().collect()))
    }
}

fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|i| !i.is_empty())
}

#[cfg(test)]
pub fn parse(extra: &[&str]) -> RuleArgs {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RuleArgs,
    }
    Cli::try_parse_from(
        ["tokenmesh-capture"]
            .into_iter()
            .chain(extra.iter().copied()),
    )
    .unwrap()
    .args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ports_are_sorted_deduplicated_and_checked() {
        assert_eq!(
            " 9090, 8080,,8080 ".parse::<Ports>().unwrap(),
            Ports(vec![8080, 9090])
        );
        assert_eq!("".parse::<Ports>().unwrap(), Ports(vec![]));
        assert!("0".parse::<Ports>().is_err());
        assert!("http".parse::<Ports>().is_err());
    }

    #[test]
    fn cidrs_of_both_families_are_networks_sorted_and_checked() {
        assert_eq!(
            "fd00:1::7/64, 10.1.2.3/8, 192.0.2.7, fd00::1"
                .parse::<Cidrs>()
                .unwrap()
                .0,
            nets(&["10.0.0.0/8", "192.0.2.7/32", "fd00::1/128", "fd00:1::/64"])
        );
        assert_eq!(
            "0.0.0.0/0, ::/0".parse::<Cidrs>().unwrap().0,
            nets(&["0.0.0.0/0", "::/0"])
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0",
            "localhost",
            "fd00::/x",
        ] {
            assert!(bad.parse::<Cidrs>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_are_split_by_family() {
        let cidrs: Cidrs = "fd00::/8,10.96.0.0/12".parse().unwrap();
        let v4: Vec<String> = cidrs.of(Family::V4).map(ToString::to_string).collect();
        let v6: Vec<String> = cidrs.of(Family::V6).map(ToString::to_string).collect();
        assert_eq!(
            (v4, v6),
            (vec!["10.96.0.0/12".into()], vec!["fd00::/8".into()])
        );
    }
}
