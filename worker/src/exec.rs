//! Exec ops (RUN): the sandbox over the input's snapshots; its upperdir is the new layer and
//! its output streams into the progress events.

// A step fails once per build and its error carries the causes by value; boxing each
// variant would only add noise on the slow path.
#![allow(clippy::result_large_err)]

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use hoist_executor::spec::{self};
use tokio::io::AsyncWrite;

use hoist_solver::op::{ExecOp, NetworkMode};
use hoist_solver::progress::{ResourceUsage, Stream};
use hoist_solver::scheduler::VertexContext;

use crate::error::WorkerError;
use crate::{BuildWorker, Layer, Output, Sandboxed};

/// How many bytes of a failed RUN's output its error shows.
const OUTPUT_TAIL: usize = 4096;

impl BuildWorker {
    pub(crate) async fn exec(
        &self,
        exec: &ExecOp,
        inputs: &[Output],
        ctx: &VertexContext,
    ) -> Result<Vec<Layer>, WorkerError> {
        let chain = inputs
            .first()
            .ok_or(WorkerError::Internal("a RUN without input"))?
            .chain()?
            .to_vec();
        let mounts = self.prepare_mounts(exec, inputs, ctx).await?;
        let mut env: Vec<String> = exec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(self.proxy_env.iter().map(|(k, v)| format!("{k}={v}")));
        env.extend(mounts.env.iter().cloned());
        let (request, scratch) = self.state.sandbox_request(
            &self.executor,
            Sandboxed {
                args: exec.args.clone(),
                env,
                cwd: &exec.cwd,
                user: &exec.user,
                hostname: "hoist",
                network: match exec.network {
                    NetworkMode::Host => spec::NetworkMode::Host,
                    NetworkMode::Default => spec::NetworkMode::Default,
                    NetworkMode::None => spec::NetworkMode::None,
                },
                insecure: exec.privileged,
                lowerdirs: self.state.snapshot_dirs(&chain)?,
                limits: self.limits,
                mounts: mounts.mounts.clone(),
            },
        )?;
        let mut stdout = LogSink::new(ctx, Stream::Stdout);
        let mut stderr = LogSink::new(ctx, Stream::Stderr);
        let outcome = tokio::select! {
            outcome = self.executor.run(request, &mut stdout, &mut stderr) => outcome?,
            () = ctx.cancelled() => return Err(WorkerError::Cancelled),
        };
        ctx.report_usage(ResourceUsage {
            peak_memory_bytes: outcome.peak_memory_bytes,
            cpu_user_us: outcome
                .cpu_time
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            cpu_system_us: None,
        });
        if !outcome.status.success() || outcome.oom_killed.is_some() {
            let status = match (outcome.oom_killed, outcome.status) {
                (Some(Some(limit)), _) => {
                    format!("killed by the OOM killer at its memory limit of {limit} bytes")
                }
                (Some(None), _) => "killed by the OOM killer".to_owned(),
                (None, hoist_executor::ExitStatus::Exited(code)) => format!("exit code: {code}"),
                (None, hoist_executor::ExitStatus::Signaled(sig)) => {
                    format!("killed by signal {sig}")
                }
            };
            let mut tail = stderr.tail();
            tail.extend(stdout.tail());
            return Err(WorkerError::Exec {
                command: exec.args.join(" "),
                status,
                tail: String::from_utf8_lossy(&tail).into_owned(),
            });
        }
        let state = Arc::clone(&self.state);
        let epoch = self.diff_options.source_date_epoch;
        // Views unmounted, copies removed, cache mounts released before the layer is made.
        drop(mounts);
        let upper = outcome.upperdir;
        let layer = tokio::task::spawn_blocking(move || {
            let layer = state.commit_layer(&upper, epoch);
            drop(scratch);
            layer
        })
        .await
        .map_err(|_| WorkerError::Internal("the layer task panicked"))??;
        let mut chain = chain;
        chain.push(layer);
        Ok(chain)
    }
}

/// Forwards a RUN's output to the progress stream as it comes, keeping a tail for errors.
pub(crate) struct LogSink<'a> {
    ctx: &'a VertexContext,
    stream: Stream,
    tail: Vec<u8>,
}

impl<'a> LogSink<'a> {
    fn new(ctx: &'a VertexContext, stream: Stream) -> Self {
        Self {
            ctx,
            stream,
            tail: Vec::new(),
        }
    }

    fn tail(&self) -> Vec<u8> {
        self.tail.clone()
    }
}

impl AsyncWrite for LogSink<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.ctx.log(this.stream, buf);
        this.tail.extend_from_slice(buf);
        if this.tail.len() > OUTPUT_TAIL {
            let cut = this.tail.len() - OUTPUT_TAIL;
            this.tail.drain(..cut);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
