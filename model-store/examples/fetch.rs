//! `bitnet fetch` as a stand-alone example, compiled from the CLI's own module so that it is
//! built and tested here before the CLI wires it up:
//!
//!     cargo run -p model-store --example fetch -- URI [--sha256 HEX] [--storage disk|memory|auto] ...

#[path = "../../functions/cli/src/fetch.rs"]
mod fetch;

use clap::Parser;

#[derive(Parser)]
#[command(name = "fetch")]
struct Cli {
    #[command(flatten)]
    args: fetch::FetchArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = fetch::run(cli.args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
