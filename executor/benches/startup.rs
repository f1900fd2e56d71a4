//! Start-to-exit time of `true` in a busybox rootfs: the built-in runtime against `runc run`,
//! on the same spec, through the same `Executor::run` (cgroup, state, overlay and cleanup
//! included). Prints the median of each and their ratio.
//!
//! `cargo bench -p hoist-executor --bench startup` (as root). `HOIST_BENCH_RUNS` sets the number
//! of runs per backend (default 100).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a bench binary

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Rig, Which};
use hoist_executor::RunRequest;

async fn measure(rig: &Rig, runs: usize) -> Vec<Duration> {
    let spec = hoist_executor::spec::build_spec(&rig.options(&["true"])).unwrap();
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 5 {
        let request = RunRequest {
            spec: spec.clone(),
            rootfs: rig.rootfs(),
            timeout: None,
        };
        let started = Instant::now();
        let outcome = rig
            .executor
            .run(request, &mut tokio::io::sink(), &mut tokio::io::sink())
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert!(outcome.status.success());
        // The first few warm caches.
        if i >= 5 {
            times.push(elapsed);
        }
    }
    times.sort();
    times
}

fn median(times: &[Duration]) -> Duration {
    times[times.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = std::env::var("HOIST_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 100 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let builtin = Rig::new(Which::Builtin);
        let runc = Rig::new(Which::Runc);
        let b = measure(&builtin, runs).await;
        let r = measure(&runc, runs).await;
        let (mb, mr) = (median(&b), median(&r));
        println!(
            "start-to-exit of `true`, median of {runs} runs: built-in {:.2} ms (p10 {:.2}, p90 {:.2}), runc {:.2} ms (p10 {:.2}, p90 {:.2}), ratio {:.3}",
            mb.as_secs_f64() * 1e3,
            b[runs / 10].as_secs_f64() * 1e3,
            b[runs * 9 / 10].as_secs_f64() * 1e3,
            mr.as_secs_f64() * 1e3,
            r[runs / 10].as_secs_f64() * 1e3,
            r[runs * 9 / 10].as_secs_f64() * 1e3,
            mb.as_secs_f64() / mr.as_secs_f64()
        );
    });
}
