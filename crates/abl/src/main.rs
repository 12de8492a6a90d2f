//! `abl`: the command-line tool of async-batch-llm (built out by the CLI issue).

fn main() {
    eprintln!(
        "abl {}: the command-line tool is not built yet; see the README",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
