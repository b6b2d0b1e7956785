use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    token_server::run(token_server::cli::Args::parse())
}
