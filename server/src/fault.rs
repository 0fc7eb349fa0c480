//! Test-only faults, for the end-to-end tests of failure handling. They
//! exist in debug builds only (`cfg(debug_assertions)`, what the test suite
//! runs); a release build ignores `HONEYCELL_TEST_FAULT` and says so.
//!
//! - `HONEYCELL_TEST_FAULT=cell_open:<i>`: cell `i` fails to open its
//!   services, as if its control-plane store were unreachable.
//! - `HONEYCELL_TEST_FAULT=cell_panic:<i>`: cell `i` panics while serving,
//!   once the file `test-fault-trigger` exists in the data directory (polled
//!   every 50 ms), so that a test first sees the server ready.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

use honeycell_types::CellId;

/// The environment variable that arms a fault.
pub const VAR: &str = "HONEYCELL_TEST_FAULT";
/// The file (in the data directory) that fires `cell_panic`.
pub const TRIGGER: &str = "test-fault-trigger";

/// An armed fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    CellOpen(u32),
    CellPanic(u32),
}

/// The fault armed by [`VAR`]; always none in a release build.
pub fn from_env() -> anyhow::Result<Option<Fault>> {
    let Some(value) = std::env::var_os(VAR) else {
        return Ok(None);
    };
    if !cfg!(debug_assertions) {
        tracing::warn!("{VAR} is set but ignored: test faults exist only in debug builds");
        return Ok(None);
    }
    let fault = parse(&value.to_string_lossy())?;
    tracing::warn!(?fault, "test fault armed ({VAR})");
    Ok(Some(fault))
}

fn parse(value: &str) -> anyhow::Result<Fault> {
    let bad = || anyhow::anyhow!("{VAR}: {value:?} is not cell_open:<cell> or cell_panic:<cell>");
    let (kind, cell) = value.split_once(':').ok_or_else(bad)?;
    let cell: u32 = cell.parse().map_err(|_| bad())?;
    match kind {
        "cell_open" => Ok(Fault::CellOpen(cell)),
        "cell_panic" => Ok(Fault::CellPanic(cell)),
        _ => Err(bad()),
    }
}

/// The error `cell_open` gives `cell`, if armed for it.
pub fn check_open(fault: Option<Fault>, cell: CellId) -> anyhow::Result<()> {
    if fault == Some(Fault::CellOpen(cell.0)) {
        anyhow::bail!(
            "test fault {VAR}=cell_open:{}: this cell cannot open its services",
            cell.0
        );
    }
    Ok(())
}

/// Never resolves; when `cell_panic` is armed for `cell`, panics once the
/// trigger file appears in `data_dir`.
pub async fn panic_when_triggered(
    fault: Option<Fault>,
    cell: CellId,
    data_dir: PathBuf,
) -> Infallible {
    if fault == Some(Fault::CellPanic(cell.0)) {
        let trigger = data_dir.join(TRIGGER);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if trigger.exists() {
                panic!("test fault {VAR}=cell_panic:{}", cell.0);
            }
        }
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(parse("cell_open:1").ok(), Some(Fault::CellOpen(1)));
        assert_eq!(parse("cell_panic:0").ok(), Some(Fault::CellPanic(0)));
        for bad in ["", "cell_open", "cell_open:x", "cell_crash:1"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
