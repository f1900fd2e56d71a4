//! The init program for the executor's own integration tests and benchmark: it does nothing but
//! hand over to [`hoist_executor::init::run_if_init`], as the hoist binary does first thing.

fn main() -> std::process::ExitCode {
    hoist_executor::init::run_if_init().unwrap_or(std::process::ExitCode::FAILURE)
}
