use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tokenmesh_sidecar::run(tokenmesh_sidecar::cli::Args::parse())
}
