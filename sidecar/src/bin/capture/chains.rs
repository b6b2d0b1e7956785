//! What is installed of each chain of ours, and bringing it to the plan.
//!
//! A chain's rules are compared with the plan in order, as `iptables -S`
//! lists them: the exemptions (the sidecar's uid, loopback, DNS) work only
//! before the REDIRECT, so the same rules in another order are not the same
//! chain.

use crate::{
    CaptureError,
    iptables::{Tables, argv},
    plan::{Chain, Rule},
};

/// More jumps than this to one chain is not something `install` made.
const MAX_JUMPS: usize = 64;

/// The rules of `chain` in an `iptables -S` listing, in order, without the
/// `-m tcp` that iptables adds after `-p tcp --dport` (the plan leaves it
/// implicit).
pub fn listed_rules(listing: &str, chain: &str) -> Vec<Rule> {
    let append = format!("-A {chain} ");
    listing
        .lines()
        .filter_map(|line| line.strip_prefix(&append))
        .map(|rule| {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let mut out = Vec::with_capacity(words.len());
            let mut i = 0;
            while let Some(word) = words.get(i) {
                if *word == "-m" && words.get(i + 1) == Some(&"tcp") {
                    i += 2;
                    continue;
                }
                out.push((*word).to_owned());
                i += 1;
            }
            out
        })
        .collect()
}

/// What is installed of one chain.
pub struct State {
    pub exists: bool,
    /// The chain holds exactly the rules wanted, in their order
    /// (meaningless if none are).
    pub rules_match: bool,
    pub jumped_to: bool,
}

pub fn state(tables: &Tables, chain: Chain, rules: Option<&[Rule]>) -> Result<State, CaptureError> {
    let f = chain.family;
    let exists = tables.test(f, &argv(chain, "-S", chain.name, &[]))?;
    let rules_match = match (exists, rules) {
        (true, Some(rules)) => {
            let listing = tables.must(f, &argv(chain, "-S", chain.name, &[]))?;
            listed_rules(&listing, chain.name) == rules
        }
        _ => false,
    };
    let jumped_to = tables.test(f, &argv(chain, "-C", chain.hook, &chain.jump()))?;
    Ok(State {
        exists,
        rules_match,
        jumped_to,
    })
}

/// Brings one chain to `rules`; whether anything changed.
pub fn reconcile(
    tables: &Tables,
    chain: Chain,
    rules: Option<&[Rule]>,
) -> Result<bool, CaptureError> {
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
pub fn listing(tables: &Tables, chain: Chain) -> Result<Vec<String>, CaptureError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{V4_OUTBOUND, desired, rule};
    use crate::settings::parse;

    fn outbound_plan() -> Vec<Rule> {
        let args = parse(&[
            "--outbound",
            "--sidecar-uid",
            "1337",
            "--exclude-outbound-ports",
            "5432",
        ]);
        let plan = desired(&args, false).unwrap();
        let (chain, rules) = &plan[1];
        assert_eq!(*chain, V4_OUTBOUND);
        rules.clone().unwrap()
    }

    /// `iptables -S TOKENMESH_OUTBOUND` as iptables 1.8.9 prints it (both
    /// backends), rules in the order given.
    fn listing_of(order: &[usize]) -> String {
        let rules = [
            "-o lo -j RETURN",
            "-m owner --uid-owner 1337 -j RETURN",
            "-p tcp -m tcp --dport 53 -j RETURN",
            "-p tcp -m tcp --dport 5432 -j RETURN",
            "-p tcp -j REDIRECT --to-ports 15001",
        ];
        let mut out = "-N TOKENMESH_OUTBOUND\n".to_owned();
        for i in order {
            out += &format!("-A TOKENMESH_OUTBOUND {}\n", rules[*i]);
        }
        out
    }

    #[test]
    fn the_installed_rules_match_in_the_planned_order() {
        let listed = listed_rules(&listing_of(&[0, 1, 2, 3, 4]), "TOKENMESH_OUTBOUND");
        assert_eq!(listed, outbound_plan());
    }

    #[test]
    fn the_same_rules_in_another_order_do_not_match() {
        // The REDIRECT moved before the exemptions: everything, the
        // sidecar's own calls included, would be captured.
        let listed = listed_rules(&listing_of(&[4, 0, 1, 2, 3]), "TOKENMESH_OUTBOUND");
        assert_eq!(listed.len(), outbound_plan().len());
        assert_ne!(listed, outbound_plan());
        // Two exemptions swapped is another chain too.
        let swapped = listed_rules(&listing_of(&[1, 0, 2, 3, 4]), "TOKENMESH_OUTBOUND");
        assert_ne!(swapped, outbound_plan());
    }

    #[test]
    fn a_missing_or_extra_rule_does_not_match() {
        let missing = listed_rules(&listing_of(&[0, 1, 2, 4]), "TOKENMESH_OUTBOUND");
        assert_ne!(missing, outbound_plan());
        let extra = listed_rules(&listing_of(&[0, 1, 2, 3, 4, 4]), "TOKENMESH_OUTBOUND");
        assert_ne!(extra, outbound_plan());
    }

    #[test]
    fn only_the_chains_own_rules_are_read() {
        let listing = "-P OUTPUT ACCEPT\n-A OUTPUT -p tcp -j TOKENMESH_OUTBOUND\n\
                       -A TOKENMESH_OUTBOUND_X -o lo -j RETURN\n-A TOKENMESH_OUTBOUND -o lo -j RETURN\n";
        assert_eq!(
            listed_rules(listing, "TOKENMESH_OUTBOUND"),
            [rule(&["-o", "lo", "-j", "RETURN"])]
        );
    }
}
