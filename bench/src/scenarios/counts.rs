//! `counts`: GraphQL `eventCounts` as one org's history grows. Sealed
//! segments answer from their summaries, so the cost of a count should
//! stay flat as the org grows (it follows the number of segments and
//! buckets and the unsealed tail, at most `storage.segment_max_rows`), while
//! a count the summaries cannot answer (filtered by `entityId`) reads every
//! row and grows with the history.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Ctx, doput_batches, flight_client, http_client, make_batch, median, thousands};
use crate::report::Report;

const ORG: &str = "counts-org";
/// Calls per measurement.
const CALLS: usize = 30;
const BATCH: usize = 65_536;
const SUMMARISED: &str =
    "{ eventCounts(groupBy: ENTITY_TYPE, bucket: HOUR) { key bucketStart count } }";
const SCANNED: &str = "{ eventCounts(groupBy: ENTITY_TYPE, bucket: HOUR, filter: {entityId: \"e-7\"}) { key bucketStart count } }";

struct Step {
    events: usize,
    /// Median and 90th percentile, ms, of the summarised and the scanned
    /// count.
    summarised: (f64, f64),
    scanned: (f64, f64),
}

pub async fn run(ctx: &Ctx, rep: &mut Report) -> anyhow::Result<()> {
    let sizes: Vec<usize> = if ctx.quick {
        vec![10_000, 100_000, 300_000]
    } else {
        vec![10_000, 100_000, 1_000_000, 3_000_000]
    };
    rep.line(&format!(
        "\nOne org on a 1-cell server (`storage.durability = interval`, segments at their defaults: sealed at 131,072 rows). The org grows to {} events through DoPut (65,536-row batches of the bench's usual events: 5 entity types, 4 event types, one event per millisecond); at each size, {CALLS} sequential calls of each of two GraphQL queries, timed from send to the last byte:\n\n- summarised: `{SUMMARISED}`\n- scanned: the same with `filter: {{entityId: \"e-7\"}}`, which summaries cannot answer, so every row is read.\n",
        sizes
            .iter()
            .map(|s| thousands(*s as f64))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some(n) = ctx.target_note() {
        rep.line(n);
    }
    let server = ctx
        .launcher
        .start(
            1,
            &[("HONEYCELL_STORAGE__DURABILITY", "interval".to_owned())],
        )
        .await?;
    let token = server.token(ORG)?;
    let client = http_client()?;
    let url = format!("{}/graphql", server.http);
    let mut flight = flight_client(&server.flight).await?;
    let mut have = 0;
    let mut steps = Vec::new();
    for &size in &sizes {
        let batches = (have..size)
            .step_by(BATCH)
            .map(|s| make_batch(s, BATCH.min(size - s)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let accepted = doput_batches(&mut flight, &token, batches).await?;
        anyhow::ensure!(
            accepted == (size - have) as u64,
            "DoPut acknowledged {accepted} of {} events",
            size - have
        );
        have = size;
        // Let the owner seal what passed the threshold.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let time = |query: &'static str| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let mut ms = Vec::with_capacity(CALLS);
                let mut total = 0;
                for _ in 0..CALLS {
                    let started = Instant::now();
                    let body: Value = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "query": query }))
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    ms.push(started.elapsed().as_secs_f64() * 1e3);
                    total = body["data"]["eventCounts"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|c| c["count"].as_u64()).sum::<u64>())
                        .ok_or_else(|| anyhow::anyhow!("no eventCounts in {body}"))?;
                }
                let p90 = {
                    let mut s = ms.clone();
                    s.sort_by(f64::total_cmp);
                    s[s.len() * 9 / 10]
                };
                anyhow::Ok(((median(ms), p90), total))
            }
        };
        let (summarised, total) = time(SUMMARISED).await?;
        anyhow::ensure!(
            total == size as u64,
            "eventCounts summed to {total}, not {size}"
        );
        let (scanned, _) = time(SCANNED).await?;
        rep.push_raw(json!({"events": size, "summarised_ms": [summarised.0, summarised.1], "scanned_ms": [scanned.0, scanned.1]}));
        steps.push(Step {
            events: size,
            summarised,
            scanned,
        });
    }
    let mut table = String::from(
        "| events in the org | summarised count: median ms | p90 ms | scanned count (entityId filter): median ms | p90 ms |\n|---:|---:|---:|---:|---:|\n",
    );
    for s in &steps {
        table.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            thousands(s.events as f64),
            s.summarised.0,
            s.summarised.1,
            s.scanned.0,
            s.scanned.1
        ));
    }
    rep.line("\n## Result\n");
    if let (Some(first), Some(last)) = (steps.first(), steps.last()) {
        rep.line(&format!(
            "- {}x the events: the summarised count's median went {:.2} → {:.2} ms (**x{:.2}**); the scanned count's {:.2} → {:.2} ms (x{:.2}).",
            last.events / first.events.max(1),
            first.summarised.0,
            last.summarised.0,
            last.summarised.0 / first.summarised.0,
            first.scanned.0,
            last.scanned.0,
            last.scanned.0 / first.scanned.0
        ));
    }
    rep.line(&format!("\n{table}"));
    Ok(())
}
