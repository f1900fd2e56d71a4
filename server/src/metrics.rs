//! Prometheus counters of the server and its `/metrics` endpoint.
//!
//! (A stand-in with the agreed interface, replaced by the real module.)
#![allow(missing_docs, clippy::unused_self)]

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub enum BuildResultLabel {
    Success,
    Failed,
    Canceled,
}

#[derive(Debug, Default)]
pub struct Metrics {}

impl Metrics {
    pub fn build_queued(&self) {}
    pub fn build_started(&self) {}
    pub fn build_finished(&self, _result: BuildResultLabel, _duration: Duration) {}
    pub fn step(&self, _cached: bool, _duration: Option<Duration>) {}
    pub fn uploaded(&self, _bytes: u64) {}
    pub fn set_queue(&self, _queued: usize) {}
    pub fn set_running(&self, _running: usize) {}
}
