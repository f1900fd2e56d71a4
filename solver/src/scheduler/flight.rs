//! In-flight work, shared by cache key between the builds that need it at once.

use super::*;

pub(super) struct Shared<R> {
    pub(super) cache: Arc<dyn Cache<R>>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) max_parallelism: usize,
    pub(super) in_flight: Mutex<HashMap<FlightKey, Arc<Flight<R>>>>,
    pub(super) next_serial: AtomicU64,
}

/// One computation of one cache key, possibly awaited by several builds.
pub(super) struct Flight<R> {
    pub(super) serial: u64,
    pub(super) cancel: CancellationToken,
    /// Builds waiting for the outcome; changed only under the solver's `in_flight` lock.
    pub(super) waiters: AtomicUsize,
    pub(super) fanout: Arc<Fanout>,
    pub(super) outcome: watch::Receiver<Option<Outcome<R>>>,
}

#[derive(Clone)]
pub(super) enum Outcome<R> {
    Ran {
        result: R,
        wall: Duration,
        usage: Option<ResourceUsage>,
    },
    Cached(R),
    Failed {
        phase: Phase,
        error: WorkerError,
        wall: Duration,
        usage: Option<ResourceUsage>,
    },
    Cancelled,
}

impl<R> Outcome<R> {
    pub(super) fn failed(phase: Phase, error: impl Into<WorkerError>) -> Self {
        Self::Failed {
            phase,
            error: error.into(),
            wall: Duration::ZERO,
            usage: None,
        }
    }
}

impl<R: Clone + Send + Sync + 'static> Shared<R> {
    /// Joins the computation of `key`, or starts one.
    pub(super) fn join_or_start(
        self: &Arc<Self>,
        flight_key: FlightKey,
        sub: Subscriber,
        build: &BuildCtx<R>,
        vertex: Arc<Vertex>,
        inputs: Vec<R>,
    ) -> Arc<Flight<R>> {
        let mut in_flight = lock(&self.in_flight);
        if let Some(flight) = in_flight.get(&flight_key) {
            flight.waiters.fetch_add(1, Ordering::SeqCst);
            flight.fanout.subscribe(sub);
            return Arc::clone(flight);
        }
        let (tx, rx) = watch::channel(None);
        let flight = Arc::new(Flight {
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
            cancel: CancellationToken::new(),
            waiters: AtomicUsize::new(1),
            fanout: Arc::new(Fanout::default()),
            outcome: rx,
        });
        flight.fanout.subscribe(sub);
        in_flight.insert(flight_key, Arc::clone(&flight));
        drop(in_flight);

        let guard = Landing {
            shared: Arc::clone(self),
            flight_key,
            serial: flight.serial,
        };
        let shared = Arc::clone(self);
        let worker = Arc::clone(&build.worker);
        let no_cache = build.no_cache;
        let cancel = flight.cancel.clone();
        let fanout = Arc::clone(&flight.fanout);
        tokio::spawn(async move {
            let outcome = shared
                .compute(
                    worker,
                    vertex,
                    inputs,
                    flight_key.0,
                    no_cache,
                    cancel,
                    fanout,
                )
                .await;
            // Leave the map before publishing: whoever sees the outcome and asks again for
            // this key finds it in the cache, not here.
            drop(guard);
            tx.send_replace(Some(outcome));
        });
        flight
    }

    /// The work of one key: a last cache lookup, a slot, the worker, the record.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    pub(super) async fn compute(
        &self,
        worker: Arc<dyn Worker<Output = R>>,
        vertex: Arc<Vertex>,
        inputs: Vec<R>,
        key: CacheKey,
        no_cache: bool,
        cancel: CancellationToken,
        fanout: Arc<Fanout>,
    ) -> Outcome<R> {
        if !no_cache {
            match self.cache.lookup(&key, &vertex).await {
                Ok(Some(hit)) => return Outcome::Cached(hit),
                Ok(None) => {}
                Err(err) => return Outcome::failed(Phase::CacheLookup, err),
            }
        }
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return Outcome::Cancelled,
            permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed.
                Err(_) => return Outcome::Cancelled,
            },
        };
        fanout.start();
        let ctx = VertexContext {
            cancel: cancel.clone(),
            fanout,
            usage: Mutex::new(None),
        };
        let started = Instant::now();
        let result = worker.run(&vertex, &inputs, &ctx).await;
        let wall = started.elapsed();
        drop(permit);
        let usage = ctx.take_usage();
        match result {
            Ok(result) => match self.cache.record(&key, &vertex, &result).await {
                Ok(()) => Outcome::Ran {
                    result,
                    wall,
                    usage,
                },
                Err(err) => Outcome::failed(Phase::CacheRecord, err),
            },
            Err(_) if cancel.is_cancelled() => Outcome::Cancelled,
            Err(err) => Outcome::Failed {
                phase: Phase::Run,
                error: err.into(),
                wall,
                usage,
            },
        }
    }

    /// Waits for a flight's outcome, or leaves it when the build is cancelled. The last build
    /// to leave cancels the work and waits for it to stop.
    pub(super) async fn wait(
        self: &Arc<Self>,
        flight: &Arc<Flight<R>>,
        flight_key: FlightKey,
        sub_serial: u64,
        cancel: &CancellationToken,
    ) -> Outcome<R> {
        let mut rx = flight.outcome.clone();
        let mut waiter = Waiter {
            shared: Arc::clone(self),
            flight: Arc::clone(flight),
            flight_key,
            sub_serial,
            armed: true,
        };
        tokio::select! {
            biased;
            outcome = rx.wait_for(Option::is_some) => {
                waiter.armed = false;
                return match outcome {
                    Ok(outcome) => outcome.clone().unwrap_or(Outcome::Cancelled),
                    // The computing task ended without an outcome: it panicked.
                    Err(_) => Outcome::failed(Phase::Run, worker_error(Panicked)),
                };
            }
            () = cancel.cancelled() => {}
        }
        waiter.armed = false;
        if self.leave(flight, flight_key, sub_serial) {
            flight.cancel.cancel();
            let _ = rx.wait_for(Option::is_some).await;
        }
        Outcome::Cancelled
    }

    /// Removes one waiter; true if it was the last, and the flight is now nobody's.
    pub(super) fn leave(&self, flight: &Flight<R>, flight_key: FlightKey, sub_serial: u64) -> bool {
        let mut in_flight = lock(&self.in_flight);
        flight.fanout.unsubscribe(sub_serial);
        if flight.waiters.fetch_sub(1, Ordering::SeqCst) != 1 {
            return false;
        }
        if in_flight
            .get(&flight_key)
            .is_some_and(|f| f.serial == flight.serial)
        {
            in_flight.remove(&flight_key);
        }
        true
    }
}

/// Removes a finished (or panicked) computation from the in-flight map.
pub(super) struct Landing<R> {
    pub(super) shared: Arc<Shared<R>>,
    pub(super) flight_key: FlightKey,
    pub(super) serial: u64,
}

impl<R> Drop for Landing<R> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.shared.in_flight);
        if in_flight
            .get(&self.flight_key)
            .is_some_and(|f| f.serial == self.serial)
        {
            in_flight.remove(&self.flight_key);
        }
    }
}

/// A build waiting for a flight. If the wait is dropped (the solve future was dropped rather
/// than cancelled), it still leaves, and cancels the work if nobody else waits.
pub(super) struct Waiter<R: Clone + Send + Sync + 'static> {
    pub(super) shared: Arc<Shared<R>>,
    pub(super) flight: Arc<Flight<R>>,
    pub(super) flight_key: FlightKey,
    pub(super) sub_serial: u64,
    pub(super) armed: bool,
}

impl<R: Clone + Send + Sync + 'static> Drop for Waiter<R> {
    fn drop(&mut self) {
        if self.armed
            && self
                .shared
                .leave(&self.flight, self.flight_key, self.sub_serial)
        {
            self.flight.cancel.cancel();
        }
    }
}
