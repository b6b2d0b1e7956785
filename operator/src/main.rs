use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tokenmesh_operator::run(tokenmesh_operator::cli::Args::parse())
}
