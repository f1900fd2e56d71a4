//! Start-to-exit time of `true` in a busybox rootfs: the built-in runtime against `runc run`,
//! on the same spec, through the same `Executor::run` (cgroup, state, overlay and cleanup
//! included). Prints the median of each and their ratio.
//!
//! `cargo bench -p hoist-executor --bench startup` (as root). `HOIST_BENCH_RUNS` sets the number
//! of runs per backend (default 100). `HOIST_BENCH_ONLY=builtin` runs the built-in runtime
//! alone (for profiling it: `perf record -a -g`, `strace -f`), and prints its figures only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a bench binary

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Rig, Which};
use hoist_executor::RunRequest;

async fn run_once(rig: &Rig, spec: &hoist_executor::oci_spec::runtime::Spec) -> Duration {
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
    elapsed
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
        let only_builtin = std::env::var("HOIST_BENCH_ONLY").is_ok_and(|v| v == "builtin");
        let builtin = Rig::new(Which::Builtin);
        let runc = (!only_builtin).then(|| Rig::new(Which::Runc));
        // One spec for both, built by the same options.
        let spec = hoist_executor::spec::build_spec(&builtin.options(&["true"])).unwrap();
        let (mut b, mut r) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        // Alternating, so that load from anything else on the machine hits both alike; the
        // first rounds warm caches and are not counted.
        for round in 0..runs + 3 {
            let tb = run_once(&builtin, &spec).await;
            if round >= 3 {
                b.push(tb);
            }
            if let Some(runc) = &runc {
                let tr = run_once(runc, &spec).await;
                if round >= 3 {
                    r.push(tr);
                }
            }
        }
        b.sort();
        r.sort();
        if runc.is_none() {
            println!(
                "start-to-exit of `true`, median of {runs} runs: built-in {:.2} ms (p10 {:.2}, p90 {:.2})",
                median(&b).as_secs_f64() * 1e3,
                b[runs / 10].as_secs_f64() * 1e3,
                b[runs * 9 / 10].as_secs_f64() * 1e3,
            );
            return;
        }
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
