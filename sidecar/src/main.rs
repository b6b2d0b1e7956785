//! The tokenmesh sidecar. Not built yet: this crate holds its place in the workspace.

fn main() {
    eprintln!("tokenmesh sidecar: not implemented yet");
    std::process::exit(2);
}
