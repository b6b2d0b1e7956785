//! Running the iptables and ip6tables commands.

use std::process::{Command, Output};

use crate::{
    CaptureError,
    plan::{Chain, Family, rule},
};

/// Seconds to wait for the xtables lock (iptables-legacy).
const LOCK_WAIT: &str = "10";

/// The iptables and ip6tables commands.
pub struct Tables {
    v4: String,
    v6: String,
}

impl Tables {
    pub fn new(iptables: &str) -> Self {
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

    pub fn command(&self, family: Family) -> &str {
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
    pub fn must(&self, family: Family, args: &[String]) -> Result<String, CaptureError> {
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
    pub fn test(&self, family: Family, args: &[String]) -> Result<bool, CaptureError> {
        Ok(self.output(family, args)?.1.status.success())
    }

    /// The version, and proof that the table can be read (permissions).
    pub fn preflight(&self, family: Family, table: &str) -> Result<String, CaptureError> {
        let version = self.must(family, &rule(&["--version"]))?;
        self.must(family, &rule(&["-w", LOCK_WAIT, "-t", table, "-S"]))?;
        Ok(version.trim().to_owned())
    }

    /// The version, after checking the tables of ours can be read.
    pub fn preflight_all(&self, ipv6: bool) -> Result<String, CaptureError> {
        let version = self.preflight(Family::V4, "nat")?;
        if ipv6 {
            self.preflight(Family::V6, "filter")?;
        }
        Ok(version)
    }
}

/// `-t TABLE OP TARGET RULE...`, waiting for the xtables lock.
pub fn argv(chain: Chain, op: &str, target: &str, spec: &[String]) -> Vec<String> {
    let mut args = rule(&["-w", LOCK_WAIT, "-t", chain.table, op, target]);
    args.extend(spec.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

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
