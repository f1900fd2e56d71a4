//! The `hoist` command line: argument parsing, wiring and error rendering only. Every piece of
//! logic lives in a library crate; this binary calls it and renders its errors once, here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Parsing, the solver and the registry client allocate many small objects; mimalloc serves
/// them about a third faster than glibc's malloc (see the parser benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod progress;
mod remote;

#[derive(Debug, Parser)]
#[command(name = "hoist", version, about = "Build OCI images from Dockerfiles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile and a context.
    Build(Box<cmd::build::BuildArgs>),
    /// Run an image in the sandbox (from the local store, or pulled).
    Run(Box<cmd::run::RunArgs>),
    /// Pull an image into the local store.
    Pull(cmd::image::PullArgs),
    /// Push an image from the local store.
    Push(cmd::image::PushArgs),
    /// List the images in the local store.
    Images(cmd::image::ImagesArgs),
    /// Export an image: OCI layout (dir or tar), docker tar, or root filesystem.
    Save(cmd::image::SaveArgs),
    /// Print a build's complete log: the newest build's, or BUILD's, or one step's output.
    Logs(cmd::logs::LogsArgs),
    /// Show the cache mounts (`RUN --mount=type=cache`) in the state root, with their sizes
    /// (on a server, also its uploaded contexts).
    Du(cmd::disk::DuArgs),
    /// Remove the cache mounts that no build is using.
    Prune(cmd::disk::PruneArgs),
    /// List the builds a server (`--remote`) runs or queues.
    Builds(cmd::builds::BuildsArgs),
    /// Follow a running build on a server, from its start.
    Attach(cmd::builds::BuildIdArgs),
    /// Cancel a build on a server.
    Cancel(cmd::builds::BuildIdArgs),
    /// Show the version, platform and limits of this hoist, or of a server (`--remote`).
    Info(cmd::info::InfoArgs),
    /// Serve builds over gRPC, for `hoist build --remote`.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Parse a Dockerfile and print its syntax tree.
    Parse(cmd::parse::ParseArgs),
    /// Tools for looking inside hoist.
    Debug {
        #[command(subcommand)]
        command: cmd::debug::DebugCommand,
    },
}

fn main() -> ExitCode {
    // The sandbox re-executes this binary as its container init (as `runc init` does); that
    // run must not parse arguments or start anything else.
    if let Some(code) = hoist_executor::init::run_if_init() {
        return code;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => cmd::build::run(*args),
        Command::Run(args) => cmd::run::run(&args),
        Command::Pull(args) => cmd::image::pull(&args),
        Command::Push(args) => cmd::image::push(&args),
        Command::Images(args) => cmd::image::images(&args),
        Command::Save(args) => cmd::image::save(&args),
        Command::Logs(args) => cmd::logs::run(&args),
        Command::Du(args) => cmd::disk::du(&args),
        Command::Prune(args) => cmd::disk::prune(&args),
        Command::Builds(args) => cmd::builds::list(&args),
        Command::Attach(args) => cmd::builds::attach(&args),
        Command::Cancel(args) => cmd::builds::cancel(&args),
        Command::Info(args) => cmd::info::run(&args),
        Command::Serve(args) => cmd::serve::run(&args),
        Command::Parse(args) => cmd::parse::run(&args),
        Command::Debug { command } => cmd::debug::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            cmd::report(&err);
            ExitCode::FAILURE
        }
    }
}
