//! A throwaway PostgreSQL for tests: its own cluster in a temporary
//! directory, on a free port of 127.0.0.1, with its socket in that directory,
//! stopped and deleted on drop. It never touches the machine's own server.
//!
//! The binaries come from `HONEYCELL_PG_BIN` (a directory), else `initdb` on
//! `PATH`, else the newest `/usr/lib/postgresql/<version>/bin`. PostgreSQL
//! refuses to run as root, so when the tests run as root the cluster belongs
//! to the `postgres` user and its commands run through `runuser`.
//!
//! Durability is off (`fsync=off`, `synchronous_commit=off`): these clusters
//! live for one test.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A running throwaway cluster.
pub struct TestPostgres {
    dir: TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
}

fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("HONEYCELL_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        // Resolved: `initdb` on PATH is often a symbolic link into the
        // versioned directory that holds the other tools (psql, pg_ctl).
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if let Ok(real) = std::fs::canonicalize(&p)
            && let Some(parent) = real.parent()
            && parent.join("psql").is_file()
        {
            return parent.to_path_buf();
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|it| {
            it.flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").is_file().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries not found: install them (apt-get install postgresql) or set HONEYCELL_PG_BIN to the directory holding initdb"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl TestPostgres {
    /// Creates and starts a cluster; panics with the tool's output if it
    /// cannot.
    pub fn start() -> TestPostgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("honeycell-pg-")
            .tempdir()
            .expect("temporary directory");
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "chown of {} to postgres failed", dir.path().display());
        }
        let pg = TestPostgres {
            dir,
            bin,
            as_postgres,
            port: 0,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let mut pg = pg;
        // Another process may take the port between probing and binding:
        // retry on a new one.
        for _ in 0..5 {
            let port = crate::free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                pg.dir.path().display()
            );
            let out = pg.command(
                "pg_ctl",
                &[
                    "-D",
                    &pg.data().to_string_lossy(),
                    "-o",
                    &opts,
                    "-l",
                    &pg.dir.path().join("server.log").to_string_lossy(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if out.status.success() {
                pg.port = port;
                return pg;
            }
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool, args);
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL through `psql` as the superuser (setup only).
    pub fn psql(&self, db: &str, sql: &str) {
        self.run(
            "psql",
            &[
                "-h",
                &self.dir.path().to_string_lossy(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                sql,
            ],
        );
    }

    /// Runs one query through `psql` and returns its unaligned output.
    pub fn psql_value(&self, db: &str, sql: &str) -> String {
        let out = self.command(
            "psql",
            &[
                "-h",
                &self.dir.path().to_string_lossy(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates database `name` and returns its URL (plaintext loopback).
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>?sslmode=disable`
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The cluster's directory (its socket, log and data live there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Turns TLS on with this certificate and key (PEM), and reloads.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.data();
        std::fs::write(data.join("server.crt"), cert_pem).expect("write server.crt");
        std::fs::write(data.join("server.key"), key_pem).expect("write server.key");
        if self.as_postgres {
            let _ = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status();
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        );
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    /// Accepts TCP connections only over TLS (`hostssl` in pg_hba.conf);
    /// the Unix socket stays open for [`TestPostgres::psql`]'s setup.
    pub fn require_tls(&self) {
        std::fs::write(
            self.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .expect("write pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()");
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.command(
                "pg_ctl",
                &[
                    "-D",
                    &self.data().to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}
