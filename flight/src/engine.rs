//! What one Flight SQL query may cost, and the sessions queries run in.
//!
//! Queries run on the query pool (`query-worker` threads), shared by every
//! cell, so its limits are process-wide: [`QueryEngine`] admits a query
//! only while fewer than `flight_sql.max_concurrent_queries` run in the
//! server and fewer than the org's own limit (its tier's
//! `max_concurrent_queries`, else `flight_sql.max_queries_per_org`) run for
//! the org — so one org's heavy queries can hold at most its share of the
//! workers, and the workers interleave running queries (DataFusion yields
//! cooperatively), so another org's query runs beside them rather than
//! after them. Every query's memory is counted by DataFusion's memory pool
//! against `flight_sql.max_query_memory` and, with all running queries,
//! against `flight_sql.max_memory`; there is no spilling to disk, so an
//! operator over its budget fails the query with RESOURCE_EXHAUSTED naming
//! the setting. `sql.rs` enforces `flight_sql.query_timeout` (time spent
//! computing, not waiting for the client to read) and stops a query when
//! its client goes away. Table functions that generate rows
//! (`generate_series`, `range`, recursive CTEs) and functions that build
//! arbitrarily large values from small inputs (`repeat`, `lpad`, `rpad`)
//! are not available.
//!
//! An org's queries also share a budget of computing time: its tier's
//! `query_seconds_per_minute`, else `flight_sql.org_query_seconds_per_minute`
//! (a token bucket holding at most `query_timeout`, so that one query of
//! the longest kind can always start from a full bucket). Every query's
//! computing time (the CPU time of planning and producing batches: not
//! waiting for the client, nor for a core) is charged as it is spent; once the org's bucket is empty its
//! next query is refused with RESOURCE_EXHAUSTED and a `retry-after` of the
//! time the bucket needs to refill past zero. Concurrency limits bound how
//! much of the pool an org holds at one moment; the budget bounds how much
//! it holds over a minute, so an org running heavy queries back to back
//! takes its share of the CPU, not all of what the cells leave idle (which
//! still slows them: cores share caches and memory bandwidth).
//!
//! The per-org counters are the one piece of state here shared between
//! cells (behind a mutex taken when a query starts, when it ends and once
//! per batch it computes): a query's cost is not bound to the cell that
//! received it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::error::DataFusionError;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use honeycell_auth::TenantContext;
use honeycell_types::OrgId;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Table functions that produce rows from nothing.
const TABLE_FUNCTIONS_OFF: [&str; 2] = ["generate_series", "range"];
/// Scalar functions whose output size is set by an argument, not the input.
const FUNCTIONS_OFF: [&str; 3] = ["repeat", "lpad", "rpad"];

/// `[flight_sql]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// Longest a query may compute (planning and execution; time waiting
    /// for the client to read is not counted), e.g. `"30s"`.
    #[serde(deserialize_with = "duration")]
    pub query_timeout: Duration,
    /// Memory one query may reserve (sorts, joins, aggregations), in bytes.
    pub max_query_memory: usize,
    /// Memory all running queries together may reserve, in bytes.
    pub max_memory: usize,
    /// Queries running at once in the server.
    pub max_concurrent_queries: usize,
    /// Queries of one org running at once, unless its tier says otherwise.
    pub max_queries_per_org: usize,
    /// Longest SQL text accepted, in bytes.
    pub max_sql_bytes: usize,
    /// Most operators (`+`, `=`, `AND`, `::`, …) in one statement. A chain
    /// of operators parses into a tree as deep as it is long, which every
    /// later pass walks recursively; this bounds that depth (parentheses,
    /// function calls and subqueries are bounded by the parser itself).
    pub max_sql_operators: usize,
    /// Seconds of computing an org's queries may use per minute, unless its
    /// tier says otherwise (a token bucket of at most `query_timeout`).
    pub org_query_seconds_per_minute: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_secs(30),
            max_query_memory: 256 * 1024 * 1024,
            max_memory: 1024 * 1024 * 1024,
            max_concurrent_queries: 16,
            max_queries_per_org: 2,
            max_sql_bytes: 64 * 1024,
            max_sql_operators: 500,
            org_query_seconds_per_minute: 15,
        }
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (use e.g. \"30s\")")))
}

impl SqlConfig {
    /// Checks the values; the error names the key to fix.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.query_timeout < Duration::from_millis(100) {
            return Err("flight_sql.query_timeout must be at least 100ms".into());
        }
        if self.max_query_memory < 1024 * 1024 || self.max_memory < self.max_query_memory {
            return Err(
                "flight_sql.max_query_memory must be at least 1 MiB and at most flight_sql.max_memory"
                    .into(),
            );
        }
        if self.max_concurrent_queries == 0 || self.max_queries_per_org == 0 {
            return Err(
                "flight_sql.max_concurrent_queries and flight_sql.max_queries_per_org must be at least 1"
                    .into(),
            );
        }
        if self.max_sql_bytes < 1024 {
            return Err("flight_sql.max_sql_bytes must be at least 1024".into());
        }
        if !(16..=2_000).contains(&self.max_sql_operators) {
            return Err("flight_sql.max_sql_operators must be from 16 to 2000".into());
        }
        if !(1..=3_600).contains(&self.org_query_seconds_per_minute) {
            return Err("flight_sql.org_query_seconds_per_minute must be from 1 to 3600 (60 is one query worker's whole time)".into());
        }
        Ok(())
    }
}

/// Admission, memory and sessions of Flight SQL queries, for the whole
/// process (one per server, shared by every cell's Flight service).
pub struct QueryEngine {
    config: SqlConfig,
    /// Where queries run (never on a cell's thread).
    pool: tokio::runtime::Handle,
    memory: Arc<GreedyMemoryPool>,
    running: Mutex<Running>,
}

impl fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Running {
    total: usize,
    by_org: HashMap<OrgId, usize>,
    /// Computing-time budgets of orgs that used some lately.
    budgets: HashMap<OrgId, Budget>,
}

/// An org's computing time, as a token bucket in seconds. It may go below
/// zero (a running query is charged as it computes, and is stopped only by
/// `query_timeout`); the org then waits until it refills past zero.
#[derive(Clone, Copy, Debug)]
struct Budget {
    seconds: f64,
    at: Instant,
    /// The org's refill rate, as of its last query.
    per_minute: f64,
}

/// Orgs' budgets kept before full ones are forgotten (a full bucket is the
/// same as none).
const BUDGETS_KEPT: usize = 4_096;

impl Budget {
    /// The balance at `now`, refilled up to `cap`.
    fn refill(&mut self, now: Instant, cap: f64) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * self.per_minute / 60.0;
        self.seconds = (self.seconds + gained).min(cap);
        self.at = now;
        self.seconds
    }
}

/// A query's place among the running ones; given back when dropped.
#[derive(Debug)]
pub struct Admission {
    engine: Arc<QueryEngine>,
    org: OrgId,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Ok(mut r) = self.engine.running.lock() {
            r.total = r.total.saturating_sub(1);
            if let Some(n) = r.by_org.get_mut(&self.org) {
                *n -= 1;
                if *n == 0 {
                    r.by_org.remove(&self.org);
                }
            }
        }
    }
}

impl QueryEngine {
    pub fn new(config: SqlConfig, pool: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Self {
            memory: Arc::new(GreedyMemoryPool::new(config.max_memory)),
            config,
            pool,
            running: Mutex::new(Running::default()),
        })
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    pub fn pool(&self) -> &tokio::runtime::Handle {
        &self.pool
    }

    /// Checks the SQL text's size and its operators' count (tokenized,
    /// which does not recurse), before anything parses it.
    pub fn check_sql(&self, sql: &str) -> Result<()> {
        let max = self.config.max_sql_bytes;
        if sql.len() > max {
            return Err(Error::Sql(format!(
                "the SQL text is {} bytes, over flight_sql.max_sql_bytes ({max})",
                sql.len()
            )));
        }
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize()
            .map_err(|e| Error::Sql(format!("the SQL does not tokenize: {e}")))?;
        let operators = tokens.iter().filter(|t| is_operator(t)).count();
        let max = self.config.max_sql_operators;
        if operators > max {
            return Err(Error::Sql(format!(
                "the statement has {operators} operators, over flight_sql.max_sql_operators ({max}); use IN (…) lists or fewer conditions"
            )));
        }
        Ok(())
    }

    /// Admits a query of `ctx`'s org, or says which limit is full.
    pub fn admit(self: &Arc<Self>, ctx: &TenantContext) -> Result<Admission> {
        let per_org = ctx
            .quota
            .max_queries
            .map_or(self.config.max_queries_per_org, |n| n as usize);
        let mut r = self.running.lock().map_err(|_| Error::QueryWorkerGone)?;
        if r.total >= self.config.max_concurrent_queries {
            return Err(Error::QueryLimit {
                message: format!(
                    "the server runs {} queries already (flight_sql.max_concurrent_queries); retry shortly",
                    r.total
                ),
                retry: Some(Duration::from_secs(1)),
            });
        }
        let per_minute = self.seconds_per_minute(ctx);
        let cap = self.config.query_timeout.as_secs_f64();
        let now = Instant::now();
        if let Some(b) = r.budgets.get_mut(&ctx.org) {
            let left = b.refill(now, cap);
            b.per_minute = per_minute;
            if left <= 0.0 {
                let wait = Duration::from_secs_f64((-left * 60.0 / per_minute).max(1.0).ceil());
                return Err(Error::QueryLimit {
                    message: format!(
                        "your org's queries used their computing time ({per_minute} s per minute: its tier's query_seconds_per_minute, else flight_sql.org_query_seconds_per_minute); retry in {} s",
                        wait.as_secs()
                    ),
                    retry: Some(wait),
                });
            }
        }
        if r.budgets.len() > BUDGETS_KEPT {
            r.budgets.retain(|_, b| b.refill(now, cap) < cap);
        }
        let n = r.by_org.entry(ctx.org.clone()).or_default();
        if *n >= per_org {
            return Err(Error::QueryLimit {
                message: format!(
                    "your org runs {per_org} queries already (its tier's max_concurrent_queries, else flight_sql.max_queries_per_org); retry when one has finished"
                ),
                retry: Some(Duration::from_secs(1)),
            });
        }
        *n += 1;
        r.total += 1;
        Ok(Admission {
            engine: self.clone(),
            org: ctx.org.clone(),
        })
    }

    /// Charges `spent` computing time to `ctx`'s org (see the module
    /// header).
    pub fn charge(&self, ctx: &TenantContext, spent: Duration) {
        let per_minute = self.seconds_per_minute(ctx);
        let cap = self.config.query_timeout.as_secs_f64();
        let now = Instant::now();
        if let Ok(mut r) = self.running.lock() {
            let b = r.budgets.entry(ctx.org.clone()).or_insert(Budget {
                seconds: cap,
                at: now,
                per_minute,
            });
            b.refill(now, cap);
            b.per_minute = per_minute;
            b.seconds -= spent.as_secs_f64();
        }
    }

    /// The refill rate of `ctx`'s org's budget.
    fn seconds_per_minute(&self, ctx: &TenantContext) -> f64 {
        ctx.quota
            .query_seconds_per_minute
            .unwrap_or(self.config.org_query_seconds_per_minute)
            .into()
    }

    /// A fresh session for one query: one partition, its own memory
    /// account within the process's, no disk, no row generators.
    pub fn session(&self) -> Result<SessionContext> {
        let memory = Arc::new(QueryMemory {
            process: self.memory.clone(),
            process_limit: self.config.max_memory,
            used: AtomicUsize::new(0),
            limit: self.config.max_query_memory,
        });
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(memory)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| Error::Sql(e.to_string()))?;
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        // A recursive CTE makes rows from nothing, like generate_series.
        config.options_mut().execution.enable_recursive_ctes = false;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        for name in TABLE_FUNCTIONS_OFF {
            ctx.deregister_udtf(name);
        }
        for name in FUNCTIONS_OFF {
            ctx.deregister_udf(name);
        }
        Ok(ctx)
    }
}

/// Whether a token is an operator: a symbol other than punctuation, or an
/// operator keyword. (Literals and identifiers are not.)
fn is_operator(token: &Token) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::DIV
                | Keyword::OVERLAPS
                | Keyword::REGEXP
                | Keyword::RLIKE
        ),
        Token::EOF
        | Token::Whitespace(_)
        | Token::Number(..)
        | Token::Comma
        | Token::LParen
        | Token::RParen
        | Token::Period
        | Token::SemiColon => false,
        other => other.to_string().chars().all(|c| c.is_ascii_punctuation()),
    }
}

/// One query's memory account: its own limit, inside the process's pool.
#[derive(Debug)]
struct QueryMemory {
    process: Arc<GreedyMemoryPool>,
    process_limit: usize,
    used: AtomicUsize,
    limit: usize,
}

impl fmt::Display for QueryMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "query memory (used {} of {} bytes)",
            self.used.load(Ordering::Relaxed),
            self.limit
        )
    }
}

/// Marks our refusals in DataFusion's error text, so that `sql.rs` can
/// tell them from DataFusion's own.
pub(crate) const QUERY_MEMORY: &str = "flight_sql.max_query_memory";
pub(crate) const SERVER_MEMORY: &str = "flight_sql.max_memory";

impl MemoryPool for QueryMemory {
    fn name(&self) -> &str {
        "honeycell-query"
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.process.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.process.shrink(reservation, shrink);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        let limit = self.limit;
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(additional).filter(|n| *n <= limit)
            })
            .map_err(|_| {
                DataFusionError::ResourcesExhausted(format!(
                    "the query needs more than {limit} bytes of memory ({QUERY_MEMORY}); aggregate, filter or LIMIT it"
                ))
            })?;
        if self.process.try_grow(reservation, additional).is_err() {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "running queries hold the server's {} bytes of query memory ({SERVER_MEMORY}); retry shortly",
                self.process_limit
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn a_query_is_held_to_its_own_limit_and_the_servers() {
        let process = Arc::new(GreedyMemoryPool::new(300));
        let q = |limit| {
            Arc::new(QueryMemory {
                process: process.clone(),
                process_limit: 300,
                used: AtomicUsize::new(0),
                limit,
            }) as Arc<dyn MemoryPool>
        };
        let (a, b) = (q(200), q(200));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(150).expect("within both limits");
        let e = ra.try_grow(100).expect_err("over the query's limit");
        assert!(e.to_string().contains(QUERY_MEMORY), "{e}");
        let e = rb.try_grow(200).expect_err("over the server's");
        assert!(e.to_string().contains(SERVER_MEMORY), "{e}");
        rb.try_grow(150).expect("what is left");
        drop(ra);
        assert_eq!(process.reserved(), 150);
    }
}

#[cfg(test)]
mod operator_tests {
    use super::*;

    fn engine() -> Arc<QueryEngine> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        QueryEngine::new(SqlConfig::default(), rt.handle().clone())
    }

    fn tenant(org: &str, quota: honeycell_auth::Quota) -> TenantContext {
        TenantContext {
            org: OrgId::new(org).expect("org"),
            subject: "analyst".into(),
            role: honeycell_auth::Role::Viewer,
            credential: honeycell_auth::Credential::ApiKey {
                key_id: "k".into(),
                scopes: honeycell_auth::ActionSet::ALL,
            },
            quota,
        }
    }

    #[test]
    fn an_org_that_spent_its_computing_time_waits_for_it_to_refill() {
        let e = engine();
        let heavy = tenant("heavy", Default::default());
        let other = tenant("other", Default::default());
        drop(e.admit(&heavy).expect("a full budget"));
        // 30 s of budget (query_timeout); 36 s spent is 6 s in debt, which
        // takes 24 s to refill at 15 s per minute.
        e.charge(&heavy, Duration::from_secs(36));
        let err = e.admit(&heavy).expect_err("the budget is spent");
        let Error::QueryLimit {
            retry: Some(wait),
            message,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!((23..=24).contains(&wait.as_secs()), "{wait:?}");
        assert!(
            message.contains("org_query_seconds_per_minute"),
            "{message}"
        );
        assert_eq!(
            err.class(),
            honeycell_types::ErrorClass::Overloaded { retry_after: *wait }
        );
        drop(e.admit(&other).expect("another org's budget is its own"));
        // A tier's rate replaces the default: at 3600 s per minute the debt
        // is gone after 0.1 s.
        let rich = tenant(
            "heavy",
            honeycell_auth::Quota {
                query_seconds_per_minute: Some(3_600),
                ..Default::default()
            },
        );
        let _ = e.admit(&rich);
        std::thread::sleep(Duration::from_millis(150));
        drop(e.admit(&rich).expect("refilled at the tier's rate"));
    }

    #[test]
    fn operator_chains_are_bounded_but_lists_are_not() {
        let e = engine();
        let chain = format!("SELECT 1{}", "+1".repeat(501));
        let err = e.check_sql(&chain).expect_err("501 operators");
        assert!(err.to_string().contains("max_sql_operators"), "{err}");
        let casts = format!("SELECT 1{}", "::int".repeat(501));
        assert!(e.check_sql(&casts).is_err());
        let ors = format!(
            "SELECT * FROM events WHERE {}",
            vec!["a = 'x'"; 300].join(" OR ")
        );
        assert!(e.check_sql(&ors).is_err());
        let list = format!(
            "SELECT * FROM events WHERE entity_id IN ({})",
            (0..3000)
                .map(|i| format!("'e-{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        e.check_sql(&list).expect("a long IN list is flat");
        e.check_sql("SELECT a.entity_id, count(*) FROM events a WHERE a.occurred_at >= '2026-01-01' AND a.event_type = 'INSERT' GROUP BY 1 ORDER BY 2 DESC LIMIT 10").expect("an ordinary query");
    }
}
