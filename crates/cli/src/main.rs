//! The `cairn` binary: parses arguments, then calls into the library crates.

mod args;
mod run;

use clap::Parser;

/// mimalloc keeps freed memory for reuse: the data path allocates and frees buffers of whole
/// blocks (4 MiB) all the time, and with the system allocator each one was fresh pages from the
/// kernel, zeroed and faulted in (about 15% of a mount's CPU on a cold sequential read).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = args::Cli::parse();
    std::process::exit(run::main(cli));
}
