//! Configuration owned by the cells: rate limits and admission control.
//!
//! Keys follow roadmap 10.1 (`[rate_limiting]`). Server-wide figures such as
//! `global_max_qps` are divided evenly among the cells at start, because each
//! cell enforces only what it owns and cells never coordinate.

use serde::Deserialize;

/// `[rate_limiting]`: token buckets, separate for reads and writes.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Turn all rate limiting off (admission control stays on).
    pub enabled: bool,
    /// Requests per second for the whole server, divided among cells.
    pub global_max_qps: u32,
    /// Requests per second per org, for reads and for writes separately.
    pub org_max_qps: u32,
    /// Requests per second per subject (user or service), reads and writes separately.
    pub client_max_qps: u32,
    /// Bucket capacity in seconds of refill: how large a burst is absorbed.
    pub burst_seconds: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            global_max_qps: 50_000,
            org_max_qps: 2_000,
            client_max_qps: 1_000,
            burst_seconds: 2.0,
        }
    }
}

/// `[admission]`: per-cell admission control on queue depth and buffered memory.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Requests a cell may hold in flight (queued on its bus inbox or being
    /// executed) before it answers 429.
    pub max_queue_depth: usize,
    /// Bytes a cell may hold in unsealed buffers and queued writes before
    /// new writes get 429.
    pub max_buffered_mb: u64,
    /// Capacity of each cell's bus inbox (bounded channel).
    pub bus_capacity: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_queue_depth: 4_096,
            max_buffered_mb: 512,
            bus_capacity: 4_096,
        }
    }
}

impl RateLimitConfig {
    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.burst_seconds <= 0.0 || !self.burst_seconds.is_finite() {
            return Err("rate_limiting.burst_seconds must be a positive number".into());
        }
        for (key, v) in [
            ("rate_limiting.global_max_qps", self.global_max_qps),
            ("rate_limiting.org_max_qps", self.org_max_qps),
            ("rate_limiting.client_max_qps", self.client_max_qps),
        ] {
            if v == 0 {
                return Err(format!(
                    "{key} must be at least 1 (set rate_limiting.enabled = false to turn limits off)"
                ));
            }
        }
        Ok(())
    }
}

impl AdmissionConfig {
    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_queue_depth == 0 {
            return Err("admission.max_queue_depth must be at least 1".into());
        }
        if self.bus_capacity == 0 {
            return Err("admission.bus_capacity must be at least 1".into());
        }
        if self.max_buffered_mb == 0 {
            return Err("admission.max_buffered_mb must be at least 1".into());
        }
        Ok(())
    }
}
