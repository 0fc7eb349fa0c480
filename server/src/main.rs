//! The `honeycell` binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use honeycell::Config;

/// mimalloc: glibc malloc/free was ≈20 % of the server's samples under
/// burst load and ≈35 % while paging GraphQL (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "honeycell",
    version,
    about = "Multi-tenant event and analytics server: cells, Arrow Flight, GraphQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by every command: they override the TOML file and the
/// `HONEYCELL_*` variables.
#[derive(Args, Clone)]
struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long, env = "HONEYCELL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (event logs, development JWT secret).
    #[arg(long, env = "HONEYCELL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP/GraphQL address, shared by all cells [default: 127.0.0.1:8000].
    #[arg(long, env = "HONEYCELL_HTTP")]
    http: Option<String>,
    /// Arrow Flight address, shared by all cells [default: 127.0.0.1:8815].
    #[arg(long, env = "HONEYCELL_FLIGHT")]
    flight: Option<String>,
    /// Number of cells (threads pinned to cores); 0: one per core.
    #[arg(long, env = "HONEYCELL_CELLS")]
    cells: Option<usize>,
    /// Write the bound ports as JSON to this file once serving.
    #[arg(long, env = "HONEYCELL_PORTS_FILE")]
    ports_file: Option<PathBuf>,
    /// cells (thread-per-core) or shared (one work-stealing runtime; the
    /// baseline for benchmarks).
    #[arg(long, env = "HONEYCELL_RUNTIME", value_enum)]
    runtime: Option<honeycell::config::RuntimeMode>,
    /// Host advertised in Flight locations.
    #[arg(long, env = "HONEYCELL_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Redis for the job queue (redis:// or rediss://).
    #[arg(long, env = "HONEYCELL_REDIS_URL")]
    redis_url: Option<String>,
}

impl ConfigFlags {
    fn load(&self) -> anyhow::Result<Config> {
        let mut c = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.http {
            c.http = v.clone();
        }
        if let Some(v) = &self.flight {
            c.flight = v.clone();
        }
        if let Some(v) = self.cells {
            c.cells = v;
        }
        if let Some(v) = &self.ports_file {
            c.ports_file = Some(v.clone());
        }
        if let Some(v) = self.runtime {
            c.runtime = v;
        }
        if let Some(v) = &self.advertise_host {
            c.advertise_host = Some(v.clone());
        }
        if let Some(v) = &self.redis_url {
            c.redis_url = Some(v.clone());
        }
        Ok(c)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ConfigFlags),
    /// Print a JWT signed with the configured key (for local use).
    Token {
        #[command(flatten)]
        flags: ConfigFlags,
        /// The org (tenant) the token is for.
        #[arg(long)]
        org: String,
        /// admin, operator or viewer (exactly, in lower case).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Lifetime, e.g. 15m, 1h; at most jwt.max_lifetime (24h by default).
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// Subject (user or service id).
        #[arg(long, default_value = "cli")]
        subject: String,
    },
    /// Validate the configuration and exit (0 when valid).
    CheckConfig(ConfigFlags),
    /// Create the control-plane store or apply pending PostgreSQL migrations
    /// (`serve` does this too, on start).
    Migrate(ConfigFlags),
    /// Audit log tools (through the running server, if one answers on
    /// <data_dir>/admin.sock; else on the store directly).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The server's token-signing keys (through the running server, if one
    /// answers on <data_dir>/admin.sock; else on the store directly).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Orgs and their quota tiers (through the running server, if one
    /// answers on <data_dir>/admin.sock; else on the store directly).
    #[command(subcommand)]
    Orgs(OrgsCommand),
}

#[derive(Subcommand)]
enum OrgsCommand {
    /// Put an org on a quota tier ([control.tiers.<name>]).
    SetTier {
        #[command(flatten)]
        flags: ConfigFlags,
        org: String,
        tier: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new signing key and retire the others (no downtime).
    Rotate(ConfigFlags),
    /// List the signing keys.
    List(ConfigFlags),
    /// Delete keys retired longer ago than the access-token lifetime.
    Prune(ConfigFlags),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every org's audit hash chain (exit 1 if any is broken).
    Verify {
        #[command(flatten)]
        flags: ConfigFlags,
        /// Only this org.
        #[arg(long)]
        org: Option<String>,
    },
}

fn token(
    flags: &ConfigFlags,
    org: &str,
    role: &str,
    ttl: &str,
    subject: &str,
) -> anyhow::Result<String> {
    let config = flags.load()?;
    let (jwt, _) = config.jwt_effective()?;
    let signer = honeycell_auth::Signer::new(&jwt).context("jwt")?;
    let org = honeycell_types::OrgId::new(org).context("--org")?;
    let role: honeycell_auth::Role = role.parse().context("--role")?;
    let ttl = honeycell_auth::parse_ttl(ttl).context("--ttl")?;
    Ok(signer.mint(&org, subject, role, ttl)?)
}

/// An admin command: through the running server when one answers on
/// `<data_dir>/admin.sock`, else on the store directly; prints its lines.
fn admin(flags: &ConfigFlags, command: honeycell::admin::Command) -> anyhow::Result<ExitCode> {
    let config = flags.load()?;
    let outcome = honeycell::admin::run(&config, &command)?;
    for line in &outcome.lines {
        println!("{line}");
    }
    Ok(ExitCode::from(outcome.status))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match &cli.command {
        Command::Serve(flags) => ok(flags.load().and_then(|config| {
            honeycell::init_logging(&config.log);
            honeycell::run(config, honeycell::stop_signal())
        })),
        Command::Token {
            flags,
            org,
            role,
            ttl,
            subject,
        } => ok(token(flags, org, role, ttl, subject).map(|t| println!("{t}"))),
        Command::CheckConfig(flags) => ok(flags.load().and_then(|c| {
            c.validate()?;
            // Reads and parses the certificate files, as `serve` would.
            let tls = honeycell_tls::Tls::load(&c.tls)?;
            if let Some(r) = c.redis() {
                honeycell_queue::Redis::new(&r)?;
            }
            println!(
                "configuration is valid: {} cells, http {}, flight {}, data_dir {}, tls {}",
                c.cell_count(),
                c.http,
                c.flight,
                c.data_dir.display(),
                match &tls {
                    None => "off",
                    Some(t) if t.flight_client_auth() => "on (Flight asks for client certificates)",
                    Some(_) => "on",
                }
            );
            Ok(())
        })),
        Command::Migrate(flags) => ok(flags
            .load()
            .and_then(|c| honeycell::admin::migrate(&c))
            .map(|line| println!("{line}"))),
        Command::Keys(KeysCommand::Rotate(flags)) => {
            admin(flags, honeycell::admin::Command::KeysRotate)
        }
        Command::Keys(KeysCommand::Prune(flags)) => {
            admin(flags, honeycell::admin::Command::KeysPrune)
        }
        Command::Keys(KeysCommand::List(flags)) => {
            admin(flags, honeycell::admin::Command::KeysList)
        }
        Command::Orgs(OrgsCommand::SetTier { flags, org, tier }) => admin(
            flags,
            honeycell::admin::Command::OrgsSetTier {
                org: org.clone(),
                tier: tier.clone(),
            },
        ),
        Command::Audit(AuditCommand::Verify { flags, org }) => admin(
            flags,
            honeycell::admin::Command::AuditVerify { org: org.clone() },
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 1: a cell failed while serving (restart me); 2: did not start
            // (configuration, data dir or port in use, a cell failed to open).
            if e.downcast_ref::<honeycell::CellFailed>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
