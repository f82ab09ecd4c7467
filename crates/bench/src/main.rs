//! `cairn-bench`: a small load generator for a mounted directory, and for the object store under it.
//!
//! It knows nothing of cairn: it runs plain POSIX calls under a directory, so `scripts/bench` runs
//! the same binary, with the same arguments, on a cairn mount and on each peer's (JuiceFS, ...);
//! `store` speaks plain S3 to the bucket.
//! Each workload is a subcommand in its own module; each phase of a workload prints one line of
//! `key=value` fields (see [`report`]), which the scripts parse.
//!
//! Workloads:
//! - `meta`: create, stat and unlink empty files ([`meta`]).
//! - `store`: the object store alone, PUT and GET of block-sized objects ([`store`]): the ceiling
//!   of the data benchmark's sequential rows.
//!
//! Invariants: every phase is bounded by an operation count given on the command line (never "as
//! many as fit in N seconds"), so two filesystems always do exactly the same work; it writes only
//! under a fresh folder of its own inside `--dir`, and removes that folder when it is done.

mod meta;
mod report;
mod runner;
mod store;

use clap::{Parser, Subcommand};

/// Load generator for a mounted directory (cairn or a peer filesystem).
#[derive(Parser, Debug)]
#[command(name = "cairn-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Metadata: create N empty files, stat each, unlink each (threads in separate folders).
    Meta(meta::MetaArgs),
    /// The object store alone: PUT then GET block-sized objects, several at once, no filesystem.
    Store(store::StoreArgs),
}

fn main() {
    // Output piped into `head` ends the run quietly, as other command-line tools do, instead of
    // a panic at the next line printed.
    // SAFETY: at the start of main, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Meta(a) => meta::run(&a),
        Command::Store(a) => store::run(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
