//! The tokenmesh operator. Not built yet: this crate holds its place in the workspace.

fn main() {
    eprintln!("tokenmesh operator: not implemented yet");
    std::process::exit(2);
}
