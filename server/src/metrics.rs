//! Prometheus counters of the server and its `/metrics` endpoint.
//!
//! [`Metrics`] is a set of atomics that the build service updates as builds queue, start, run
//! steps and end; [`Metrics::render`] writes them in the Prometheus text exposition format
//! (0.0.4), and [`serve_metrics`] serves that on `GET /metrics` (`--metrics-addr`).
//!
//! Labels are few and fixed (`result` = success|failed|canceled, `cached` = true|false): never a
//! build id, an image name or a client, which would make a new series per build.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a build ended, as the `result` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildResultLabel {
    Success,
    Failed,
    Canceled,
}

impl BuildResultLabel {
    const ALL: [Self; 3] = [Self::Success, Self::Failed, Self::Canceled];

    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds, in seconds, of the build duration histogram's buckets: from a cached rebuild
/// to an hour-long build.
const BUILD_BUCKETS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Upper bounds, in seconds, of the step duration histogram's buckets: from a file op to a
/// long compile.
const STEP_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// A histogram of durations with fixed buckets. Its count is derived from the buckets, so a
/// scrape never sees a count that disagrees with them.
#[derive(Debug)]
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    /// `buckets[i]` counts observations in (bounds[i-1], bounds[i]]; the last counts the rest.
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [f64; N]) -> Self {
        Self {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        match self.bounds.iter().position(|bound| seconds <= *bound) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines; `labels` is empty or ends with a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let bare = labels.trim_end_matches(',');
        let bare = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{bare} {sum}");
        let _ = writeln!(out, "{name}_count{bare} {cumulative}");
    }
}

/// The server's counters and gauges. Shared behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    builds_queued: AtomicU64,
    builds_started: AtomicU64,
    builds: [AtomicU64; 3],
    build_duration: [Histogram<12>; 3],
    steps_cached: AtomicU64,
    steps_run: AtomicU64,
    step_duration: Histogram<13>,
    bytes_uploaded: AtomicU64,
    queue: AtomicU64,
    running: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            builds_queued: AtomicU64::new(0),
            builds_started: AtomicU64::new(0),
            builds: std::array::from_fn(|_| AtomicU64::new(0)),
            build_duration: std::array::from_fn(|_| Histogram::new(&BUILD_BUCKETS)),
            steps_cached: AtomicU64::new(0),
            steps_run: AtomicU64::new(0),
            step_duration: Histogram::new(&STEP_BUCKETS),
            bytes_uploaded: AtomicU64::new(0),
            queue: AtomicU64::new(0),
            running: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// A build was accepted (it may wait for a slot).
    pub fn build_queued(&self) {
        self.builds_queued.fetch_add(1, Relaxed);
    }

    /// A build got a slot and started.
    pub fn build_started(&self) {
        self.builds_started.fetch_add(1, Relaxed);
    }

    /// A build ended, after `duration` from its start.
    pub fn build_finished(&self, result: BuildResultLabel, duration: Duration) {
        self.builds[result.index()].fetch_add(1, Relaxed);
        self.build_duration[result.index()].observe(duration);
    }

    /// A step was answered from the cache (`cached`) or run; `duration` is how long it ran, when
    /// it did.
    pub fn step(&self, cached: bool, duration: Option<Duration>) {
        if cached {
            self.steps_cached.fetch_add(1, Relaxed);
        } else {
            self.steps_run.fetch_add(1, Relaxed);
        }
        if let Some(duration) = duration {
            self.step_duration.observe(duration);
        }
    }

    /// Context bytes a client uploaded (blobs the server lacked).
    pub fn uploaded(&self, bytes: u64) {
        self.bytes_uploaded.fetch_add(bytes, Relaxed);
    }

    /// How many builds wait for a slot now.
    pub fn set_queue(&self, queued: usize) {
        self.queue.store(queued as u64, Relaxed);
    }

    /// How many builds run now.
    pub fn set_running(&self, running: usize) {
        self.running.store(running as u64, Relaxed);
    }

    /// The metrics in the Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "hoist_builds_queued_total",
            "Builds accepted, including those that waited for a slot.",
            self.builds_queued.load(Relaxed),
        );
        counter(
            "hoist_builds_started_total",
            "Builds that got a slot and started.",
            self.builds_started.load(Relaxed),
        );
        counter(
            "hoist_cache_hits_total",
            "Steps answered from the cache.",
            self.steps_cached.load(Relaxed),
        );
        counter(
            "hoist_cache_misses_total",
            "Steps the cache could not answer, which ran.",
            self.steps_run.load(Relaxed),
        );
        counter(
            "hoist_bytes_uploaded_total",
            "Build context bytes uploaded by clients.",
            self.bytes_uploaded.load(Relaxed),
        );

        out.push_str(
            "# HELP hoist_builds_total Builds that ended, by result.\n# TYPE hoist_builds_total counter\n",
        );
        for result in BuildResultLabel::ALL {
            let value = self.builds[result.index()].load(Relaxed);
            let _ = writeln!(
                out,
                "hoist_builds_total{{result=\"{}\"}} {value}",
                result.as_str()
            );
        }

        out.push_str(
            "# HELP hoist_steps_total Steps of builds, by whether the cache answered them.\n# TYPE hoist_steps_total counter\n",
        );
        let _ = writeln!(
            out,
            "hoist_steps_total{{cached=\"true\"}} {}",
            self.steps_cached.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "hoist_steps_total{{cached=\"false\"}} {}",
            self.steps_run.load(Relaxed)
        );

        out.push_str(
            "# HELP hoist_build_duration_seconds How long builds took from start to end, by result.\n# TYPE hoist_build_duration_seconds histogram\n",
        );
        for result in BuildResultLabel::ALL {
            let labels = format!("result=\"{}\",", result.as_str());
            self.build_duration[result.index()].render(
                &mut out,
                "hoist_build_duration_seconds",
                &labels,
            );
        }

        out.push_str(
            "# HELP hoist_step_duration_seconds How long the steps that ran took.\n# TYPE hoist_step_duration_seconds histogram\n",
        );
        self.step_duration
            .render(&mut out, "hoist_step_duration_seconds", "");

        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "hoist_builds_queued",
            "Builds waiting for a slot.",
            self.queue.load(Relaxed),
        );
        gauge(
            "hoist_builds_running",
            "Builds running.",
            self.running.load(Relaxed),
        );
        out
    }
}

/// The metrics endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr} (--metrics-addr): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves `GET /metrics` on `addr` until `shutdown` is cancelled.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), MetricsError> {
    MetricsListener::bind(addr)
        .await?
        .serve(metrics, shutdown)
        .await;
    Ok(())
}

/// The metrics endpoint's listener, bound but not yet serving.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
}

impl MetricsListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The address bound, with the port the system chose for port 0.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` is cancelled, then lets the scrapes in progress finish.
    pub async fn serve(self, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: a scraper retries, so wait a little
                    // rather than spin.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&metrics, &request);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    // A client that connects and sends nothing holds a task; this bounds it.
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
    }
}

fn respond<B>(metrics: &Metrics, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let response = http::Response::builder();
    let (response, body) = if request.uri().path() != "/metrics" {
        (
            response.status(http::StatusCode::NOT_FOUND),
            Bytes::from_static(b"not found: metrics are at /metrics\n"),
        )
    } else if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        (
            response
                .status(http::StatusCode::METHOD_NOT_ALLOWED)
                .header(http::header::ALLOW, "GET, HEAD"),
            Bytes::from_static(b"method not allowed: use GET\n"),
        )
    } else {
        (
            response.header(
                http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            Bytes::from(metrics.render()),
        )
    };
    response
        .body(Full::new(body))
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_the_values_builds_changed() {
        let metrics = Arc::new(Metrics::default());
        metrics.build_queued();
        metrics.build_queued();
        metrics.build_started();
        metrics.build_finished(BuildResultLabel::Success, Duration::from_millis(1500));
        metrics.build_finished(BuildResultLabel::Canceled, Duration::from_secs(7200));
        metrics.step(true, None);
        metrics.step(false, Some(Duration::from_millis(200)));
        metrics.step(false, Some(Duration::from_secs(3)));
        metrics.uploaded(1000);
        metrics.uploaded(234);
        metrics.set_queue(3);
        metrics.set_running(2);

        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(listener.serve(metrics.clone(), shutdown.clone()));

        let response = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        for line in [
            "hoist_builds_queued_total 2",
            "hoist_builds_started_total 1",
            "hoist_builds_total{result=\"success\"} 1",
            "hoist_builds_total{result=\"failed\"} 0",
            "hoist_builds_total{result=\"canceled\"} 1",
            "hoist_steps_total{cached=\"true\"} 1",
            "hoist_steps_total{cached=\"false\"} 2",
            "hoist_cache_hits_total 1",
            "hoist_cache_misses_total 2",
            "hoist_bytes_uploaded_total 1234",
            "hoist_builds_queued 3",
            "hoist_builds_running 2",
            "# TYPE hoist_build_duration_seconds histogram",
            "hoist_build_duration_seconds_bucket{result=\"success\",le=\"1\"} 0",
            "hoist_build_duration_seconds_bucket{result=\"success\",le=\"2.5\"} 1",
            "hoist_build_duration_seconds_sum{result=\"success\"} 1.5",
            "hoist_build_duration_seconds_count{result=\"success\"} 1",
            // Past the last bucket: counted only in +Inf.
            "hoist_build_duration_seconds_bucket{result=\"canceled\",le=\"3600\"} 0",
            "hoist_build_duration_seconds_bucket{result=\"canceled\",le=\"+Inf\"} 1",
            "hoist_step_duration_seconds_bucket{le=\"0.25\"} 1",
            "hoist_step_duration_seconds_bucket{le=\"5\"} 2",
            "hoist_step_duration_seconds_sum 3.2",
            "hoist_step_duration_seconds_count 2",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "no line {line:?} in /metrics:\n{body}"
            );
        }

        let other = get(
            addr,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .unwrap()
            .unwrap();
    }
}
