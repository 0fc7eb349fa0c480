use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledge after the WAL is fsynced (group commit shares one fsync
    /// per file among all appends queued at that moment).
    Fsync,
    /// Acknowledge after the write reaches the page cache; fsync every
    /// interval. A power loss can lose up to one interval of acked events.
    Interval(Duration),
}

/// The `durability` key of [`StorageConfig`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityConfig {
    #[default]
    Fsync,
    Interval,
}

/// The `[storage]` section of the server's configuration. The data
/// directory is not part of it: it is passed to [`crate::Store::open`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"fsync"` (default) or `"interval"`.
    pub durability: DurabilityConfig,
    /// Fsync period when `durability = "interval"`.
    pub fsync_interval_ms: u64,
    /// A memtable with this many rows is sealed into a segment, and a sealed
    /// segment holds at most this many rows.
    pub segment_max_rows: usize,
    /// A memtable holding this many bytes (in memory) is sealed.
    pub segment_max_bytes: u64,
    /// Adjacent segments each below this many rows are merged.
    pub compact_below_rows: usize,
    /// Whole segments whose newest `occurred_at` is older than this are
    /// deleted. Either a humantime string (`"30d"`, `"12h 30m"`) or a number
    /// of seconds (integer or digit string). Absent: keep forever.
    #[serde(deserialize_with = "deserialize_retention")]
    pub retention: Option<Duration>,
    /// How long a stored event's `event_id` is remembered, per org, so that
    /// an event sent again with the same id is not stored twice (`dedup.rs`).
    /// A humantime string or a number of seconds; `0` turns it off.
    #[serde(deserialize_with = "deserialize_dedup_window")]
    pub dedup_window: Duration,
    /// The most event ids remembered per org; over it the oldest are
    /// forgotten first, so under heavy ingest the window is shorter.
    pub dedup_max_ids: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            durability: DurabilityConfig::Fsync,
            fsync_interval_ms: 10,
            segment_max_rows: 131_072,
            segment_max_bytes: 64 * 1024 * 1024,
            compact_below_rows: 16_384,
            retention: None,
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_max_ids: 1_000_000,
        }
    }
}

impl StorageConfig {
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityConfig::Fsync => Durability::Fsync,
            DurabilityConfig::Interval => {
                Durability::Interval(Duration::from_millis(self.fsync_interval_ms))
            }
        }
    }

    /// Reject values that would make the store misbehave; the error names
    /// the key to fix.
    pub fn validate(&self) -> Result<()> {
        if self.segment_max_rows == 0 {
            return Err(Error::Config {
                key: "segment_max_rows",
                reason: "must be at least 1".into(),
            });
        }
        if self.segment_max_bytes == 0 {
            return Err(Error::Config {
                key: "segment_max_bytes",
                reason: "must be at least 1".into(),
            });
        }
        if self.durability == DurabilityConfig::Interval && self.fsync_interval_ms == 0 {
            return Err(Error::Config {
                key: "fsync_interval_ms",
                reason: "must be at least 1 with durability = \"interval\"; use durability = \"fsync\" to fsync every commit".into(),
            });
        }
        if self.retention == Some(Duration::ZERO) {
            return Err(Error::Config {
                key: "retention",
                reason: "must be longer than zero; leave it out to keep events forever".into(),
            });
        }
        if self.dedup_window.as_micros() > i64::MAX as u128 {
            return Err(Error::Config {
                key: "dedup_window",
                reason: "is too long; write e.g. \"24h\", or 0 to turn deduplication off".into(),
            });
        }
        Ok(())
    }

    /// `dedup_window` in microseconds; 0 when deduplication is off.
    pub(crate) fn dedup_window_us(&self) -> i64 {
        i64::try_from(self.dedup_window.as_micros()).unwrap_or(i64::MAX)
    }
}

/// Parse a retention period: digits alone are seconds, anything else is a
/// humantime duration such as `"30d"` or `"1h 30m"`.
pub fn parse_retention(text: &str) -> Result<Duration> {
    parse_duration("retention", text)
}

/// A duration in `[storage]`: digits alone are seconds, anything else is
/// humantime; errors name `key`.
fn parse_duration(key: &'static str, text: &str) -> Result<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| Error::Config {
                key,
                reason: e.to_string(),
            });
    }
    humantime::parse_duration(text).map_err(|e| Error::Config {
        key,
        reason: format!("{e}; write e.g. \"30d\", \"12h\" or a number of seconds"),
    })
}

/// How `[storage]` durations are written: seconds or humantime text.
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Seconds(u64),
    Text(String),
}

impl DurationRepr {
    fn parse<E: serde::de::Error>(self, key: &'static str) -> Result<Duration, E> {
        match self {
            DurationRepr::Seconds(s) => Ok(Duration::from_secs(s)),
            DurationRepr::Text(t) => parse_duration(key, &t).map_err(E::custom),
        }
    }
}

fn deserialize_retention<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    Option::<DurationRepr>::deserialize(de)?
        .map(|r| r.parse("retention"))
        .transpose()
}

fn deserialize_dedup_window<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    DurationRepr::deserialize(de)?.parse("dedup_window")
}
