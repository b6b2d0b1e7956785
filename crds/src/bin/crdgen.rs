//! Writes the CustomResourceDefinitions as YAML: into a folder (one file per
//! kind, as the Helm chart holds them) or, without an argument, to stdout.

use std::{path::PathBuf, process::ExitCode};

use kube::CustomResourceExt;
use tokenmesh_crds::{ExchangePolicy, OAuthClient, Scope, TokenServer};

fn main() -> ExitCode {
    let crds = [
        ("oauthclients", OAuthClient::crd()),
        ("scopes", Scope::crd()),
        ("exchangepolicies", ExchangePolicy::crd()),
        ("tokenservers", TokenServer::crd()),
    ];
    let out_dir = std::env::args_os().nth(1).map(PathBuf::from);
    for (plural, crd) in crds {
        let yaml = match serde_yaml_ng::to_string(&crd) {
            Ok(yaml) => yaml,
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
