//! Writes the CustomResourceDefinitions as YAML: into a folder (one file per
//! kind, as the Helm chart holds them) or, without an argument, to stdout.

use std::{path::PathBuf, process::ExitCode};

use kube::CustomResourceExt;
use tokenmesh_crds::{ExchangePolicy, IdentityProvider, OAuthClient, Scope, TokenServer};

fn main() -> ExitCode {
    let crds = [
        ("oauthclients", OAuthClient::crd()),
        ("scopes", Scope::crd()),
        ("exchangepolicies", ExchangePolicy::crd()),
        ("tokenservers", TokenServer::crd()),
        ("identityproviders", IdentityProvider::crd()),
    ];
    let out_dir = std::env::args_os().nth(1).map(PathBuf::from);
    for (plural, crd) in crds {
        let yaml = match serde_yaml_ng::to_string(&crd) {
            Ok(yaml) => quote_ambiguous_keys(&yaml),
            Err(err) => {
                eprintln!("crdgen: cannot serialise {plural}: {err}");
                return ExitCode::FAILURE;
            }
        };
        let result = match &out_dir {
            Some(dir) => std::fs::write(dir.join(format!("{plural}.tokenmesh.dev.yaml")), yaml),
            None => {
                println!("---\n{yaml}");
                Ok(())
            }
        };
        if let Err(err) = result {
            eprintln!("crdgen: cannot write {plural}: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// kubectl and Helm read YAML 1.1, where a bare `y` or `n` (the JWK members)
/// is a boolean: quote such keys so the schema keeps its property names.
fn quote_ambiguous_keys(yaml: &str) -> String {
    const AMBIGUOUS: [&str; 12] = [
        "y", "Y", "n", "N", "yes", "no", "on", "off", "Yes", "No", "On", "Off",
    ];
    let mut out = String::with_capacity(yaml.len() + 64);
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let quoted = line[indent..]
            .split_once(':')
            .filter(|(key, rest)| {
                AMBIGUOUS.contains(key) && (rest.is_empty() || rest.starts_with(' '))
            })
            .map(|(key, rest)| format!("{}'{key}':{rest}", &line[..indent]));
        out.push_str(quoted.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::quote_ambiguous_keys;

    #[test]
    fn yaml_1_1_booleans_are_quoted_as_keys_only() {
        let yaml =
            "properties:\n  x:\n    type: string\n  y:\n    type: string\n  n: {}\n  name: y\n";
        assert_eq!(
            quote_ambiguous_keys(yaml),
            "properties:\n  x:\n    type: string\n  'y':\n    type: string\n  'n': {}\n  name: y\n"
        );
    }
}
