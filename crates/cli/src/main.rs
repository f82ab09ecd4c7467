//! The `cairn` binary: parses arguments, then calls into the library crates.

mod args;
mod run;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    std::process::exit(run::main(cli));
}
