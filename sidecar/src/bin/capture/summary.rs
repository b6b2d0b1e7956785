//! A sentence per chain saying what it does, for people.

use std::fmt;

use crate::{
    plan::{DNS, Family},
    settings::RuleArgs,
};

pub struct Summary<'a> {
    pub args: &'a RuleArgs,
    pub ipv6: bool,
}

fn list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Summary<'_> {
    /// What outbound capture leaves alone in one address family.
    fn exempt(&self, family: Family) -> String {
        let args = self.args;
        let mut except = vec![
            format!("uid {}", args.sidecar_uid.unwrap_or_default()),
            "loopback".to_owned(),
            format!("port {DNS} (DNS)"),
        ];
        except.extend(
            args.exclude_outbound_cidrs
                .of(family)
                .map(|n| n.to_string()),
        );
        if !args.exclude_outbound_ports.0.is_empty() {
            except.push(format!("port(s) {}", list(&args.exclude_outbound_ports.0)));
        }
        except.join(", ")
    }
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Summary { args, ipv6 } = *self;
        if args.inbound_ports.0.is_empty() {
            writeln!(f, "inbound: not captured (no --inbound-ports)")?;
        } else {
            let ports = list(&args.inbound_ports.0);
            writeln!(
                f,
                "inbound: TCP to port(s) {ports} is redirected to the sidecar on port {}",
                args.sidecar_inbound_port
            )?;
            if ipv6 {
                writeln!(
                    f,
                    "inbound IPv6: TCP to port(s) {ports} from outside the pod is refused"
                )?;
            }
        }
        if !args.outbound {
            return writeln!(f, "outbound: not captured (no --outbound)");
        }
        writeln!(
            f,
            "outbound: TCP is redirected to the sidecar on port {}, except {}",
            args.sidecar_outbound_port,
            self.exempt(Family::V4)
        )?;
        if ipv6 {
            writeln!(
                f,
                "outbound IPv6: TCP is refused, except {}",
                self.exempt(Family::V6)
            )?;
        }
        Ok(())
    }
}
