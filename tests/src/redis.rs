//! A throwaway Redis for tests: `redis-server` on a free port of 127.0.0.1,
//! in a temporary directory, without persistence, killed on drop; with
//! TLS, on a TLS-only port with a certificate from a [`crate::TestCa`]. It
//! never touches the machine's own Redis.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{TestCa, free_port};

/// A running throwaway Redis.
pub struct TestRedis {
    child: Child,
    dir: TempDir,
    pub port: u16,
    tls: bool,
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestRedis {
    /// Plaintext Redis.
    pub fn start() -> TestRedis {
        Self::spawn(None, free_port())
    }

    /// Plaintext Redis on `port` (to bring one back where it was).
    pub fn start_on(port: u16) -> TestRedis {
        Self::spawn(None, port)
    }

    /// TLS-only Redis with a server certificate for localhost from `ca`.
    pub fn start_tls(ca: &TestCa) -> TestRedis {
        Self::spawn(Some(ca), free_port())
    }

    fn spawn(ca: Option<&TestCa>, port: u16) -> TestRedis {
        let dir = tempfile::Builder::new()
            .prefix("honeycell-redis-")
            .tempdir()
            .expect("temp dir");
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("redis.log"));
        if let Some(ca) = ca {
            let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
            let write = |name: &str, text: &str| {
                let p = dir.path().join(name);
                std::fs::write(&p, text).expect("write a PEM file");
                p
            };
            let (cert, key, ca_file) = (
                write("redis.pem", &cert),
                write("redis-key.pem", &key),
                write("ca.pem", &ca.cert_pem),
            );
            cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca_file)
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (apt-get install redis-server)")
            });
        let redis = TestRedis {
            child,
            dir,
            port,
            tls: ca.is_some(),
        };
        redis.wait_ready();
        redis
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("Ready to accept connections") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:port` or `rediss://localhost:port`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
