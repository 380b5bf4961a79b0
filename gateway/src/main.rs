//! The `warden` command.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use warden_audit::{CheckpointKeys, UnsignedTail};
use warden_gateway::config::Config;
use warden_gateway::{cli, state};
use warden_sdk::VerifyReport;

/// The binary's allocator: per-record and per-field allocations dominate the data plane.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Data-governance gateway for GDPR and PCI DSS"
)]
struct Args {
    /// Configuration file (TOML); without one Warden runs on embedded defaults.
    #[arg(long, short, global = true, env = "WARDEN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Address to listen on (overrides `listen` in the config).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Send a batch file (JSON, NDJSON, CSV, Parquet) through a running gateway's ingest API,
    /// in batches, with a progress bar. Credentials from the environment: WARDEN_TOKEN, or
    /// WARDEN_CLIENT_ID and WARDEN_CLIENT_SECRET. Exit 0 when every record was accepted, 1
    /// when some were refused (listed by record number and field), 2 on errors.
    Ingest {
        file: PathBuf,
        #[arg(long)]
        dataset: String,
        /// The purpose of processing.
        #[arg(long, env = "WARDEN_PURPOSE")]
        purpose: String,
        /// The gateway (default: http:// and the configured listen address).
        #[arg(long, env = "WARDEN_URL")]
        url: Option<String>,
        /// Default: from the file's extension.
        #[arg(long, value_enum)]
        format: Option<warden_gateway::ingest::Format>,
        /// Records per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Stop at the first batch with a refused record (that batch is not accepted).
        #[arg(long)]
        atomic: bool,
    },
    /// Materialize the configured aggregate tables (all, or those named) now.
    Materialize { names: Vec<String> },
    /// Work with dataset contracts.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Ask a running gateway to erase a data subject (GDPR Art. 17) and follow the job to its
    /// signed receipt. SUBJECT: the subject's identifier, its subject_ref, or `me` with a
    /// data subject's own token. Credentials: WARDEN_TOKEN (a DPO's needs a fresh second
    /// factor), or WARDEN_CLIENT_ID and WARDEN_CLIENT_SECRET.
    Erase {
        subject: String,
        /// The gateway (default: http:// and the configured listen address).
        #[arg(long, env = "WARDEN_URL")]
        url: Option<String>,
        /// Makes the request safe to repeat.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Return once the request is accepted instead of following the job.
        #[arg(long)]
        no_wait: bool,
        /// Follow the job at most this long.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Write the signed receipt here once completed.
        #[arg(long)]
        receipt: Option<PathBuf>,
    },
    /// Erasure jobs of a running gateway.
    Erasure {
        #[command(subcommand)]
        command: ErasureCommand,
    },
    /// Erasure receipts.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// Work with the keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rewrap every secret held under the old key-encryption key (`--from`) under the one
    /// configured now (`keys.kek`). Resumable: run it again after an interruption.
    Rotate {
        /// The old key: file://PATH or aws-kms:KEY_ID.
        #[arg(long)]
        from: String,
    },
}

#[derive(Subcommand)]
enum ErasureCommand {
    /// One job (with its receipt once completed), or the list (filtered by --state,
    /// --overdue).
    Status {
        job: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        overdue: bool,
        #[arg(long, env = "WARDEN_URL")]
        url: Option<String>,
        /// Write the job's signed receipt here (once it is completed).
        #[arg(long, requires = "job")]
        receipt: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Check a receipt's signature offline; exit 0 when valid, 1 otherwise.
    Verify {
        receipt: PathBuf,
        /// The gateway's public key (hex), as `warden audit public-key` prints it.
        #[arg(long)]
        public_key: String,
    },
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// Read a sample (JSON, NDJSON, CSV, Parquet) and propose a contract: a class and type for
    /// each field from what its values are, the evidence as comments, never a value. Review
    /// it, then install it with PUT /v1/datasets/{name} or in datasets_dir.
    Suggest {
        file: PathBuf,
        /// The dataset's name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// Default: from the file's extension.
        #[arg(long, value_enum)]
        format: Option<warden_gateway::ingest::Format>,
        /// Write the contract here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain, the signed checkpoints and the head's seal; exit 0 when intact,
    /// 1 naming the first bad entry otherwise (entries no signature covers are bad too).
    Verify {
        /// Verify this export offline instead of the configured database.
        #[arg(long, requires = "public_key")]
        export: Option<PathBuf>,
        /// Checkpoint public key (hex), for --export.
        #[arg(long)]
        public_key: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Pass entries after the last signature (a log written without a key, or cut off
        /// before its head was sealed), saying how many were accepted unsigned.
        #[arg(long)]
        accept_unsigned_tail: bool,
    },
    /// Export the whole audit log as NDJSON (stdout, or --out).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the checkpoint public keys, for offline verification.
    PublicKey,
}

/// Without `RUST_LOG`: Warden's own INFO lines, and only warnings and errors from the
/// libraries under it (the Delta kernel alone wrote megabytes of INFO a few minutes in).
const DEFAULT_LOG_FILTER: &str = "warn,warden=info,warden_gateway=info,warden_audit=info,\
                                  warden_policy=info,warden_pipeline=info,warden_sdk=info";

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(args.config.as_deref(), &env)?;
    match args.command {
        Command::Serve { listen } => serve(config, listen, &env).await,
        Command::Migrate => {
            state::open_databases(&config).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    export,
                    public_key,
                    json,
                    accept_unsigned_tail,
                },
        } => {
            let tail = if accept_unsigned_tail {
                UnsignedTail::Accept
            } else {
                UnsignedTail::Refuse
            };
            let report = match export {
                Some(path) => {
                    let mut keys = CheckpointKeys::new();
                    for k in &public_key {
                        let (kid, key) = cli::parse_public_key(k)?;
                        keys.insert(kid, key);
                    }
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    cli::verify_export(std::io::BufReader::new(file), keys, tail)?
                }
                None => cli::verify_db(&config, tail).await?,
            };
            Ok(print_report(&report, json))
        }
        Command::Audit {
            command: AuditCommand::Export { out },
        } => {
            let n = match out {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(
                        std::fs::File::create(&path)
                            .with_context(|| format!("cannot create {}", path.display()))?,
                    );
                    cli::export(&config, &mut file).await?
                }
                None => cli::export(&config, &mut std::io::stdout().lock()).await?,
            };
            eprintln!("exported {n} audit events");
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase {
            subject,
            url,
            idempotency_key,
            no_wait,
            timeout,
            receipt,
        } => {
            let client = api_client(&config, url, &env).await?;
            let job = warden_gateway::erasure::cli::erase(
                &client,
                &subject,
                idempotency_key.as_deref(),
                (!no_wait).then_some(timeout),
                &mut std::io::stderr(),
            )
            .await?;
            println!("{}", warden_gateway::erasure::cli::summary(&job));
            if let (Some(path), Some(r)) = (receipt, job.get("receipt").filter(|r| r.is_object())) {
                std::fs::write(&path, serde_json::to_string_pretty(r)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("receipt written to {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erasure {
            command:
                ErasureCommand::Status {
                    job,
                    state,
                    overdue,
                    url,
                    receipt,
                },
        } => {
            let client = api_client(&config, url, &env).await?;
            match job {
                Some(id) => {
                    let job = client.erasure(&id).await?;
                    println!("{}", serde_json::to_string_pretty(&job)?);
                    if let Some(path) = receipt {
                        let r = job
                            .get("receipt")
                            .filter(|r| r.is_object())
                            .context("the job has no receipt yet: it is not completed")?;
                        std::fs::write(&path, serde_json::to_string_pretty(r)?)
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        eprintln!("receipt written to {}", path.display());
                    }
                }
                None => {
                    let mut q: Vec<(&str, &str)> = Vec::new();
                    if let Some(s) = &state {
                        q.push(("state", s));
                    }
                    if overdue {
                        q.push(("overdue", "true"));
                    }
                    let list = client.erasures(&q).await?;
                    for j in list["jobs"].as_array().into_iter().flatten() {
                        println!("{}", warden_gateway::erasure::cli::summary(j));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Receipt {
            command:
                ReceiptCommand::Verify {
                    receipt,
                    public_key,
                },
        } => match warden_gateway::erasure::cli::verify_receipt(&receipt, &public_key) {
            Ok(r) => {
                println!(
                    "receipt valid: job {} erased {} (audit event {}), completed {}",
                    r.job, r.subject_ref, r.audit_seq, r.completed_at
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("receipt does NOT verify: {e:#}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Ingest {
            file,
            dataset,
            purpose,
            url,
            format,
            batch,
            atomic,
        } => {
            let client = api_client(&config, url, &env).await?.with_purpose(purpose);
            let options = warden_gateway::ingest::Options {
                dataset,
                format,
                batch,
                atomic,
                progress: true,
            };
            let summary =
                warden_gateway::ingest::ingest(&client, &file, &options, &mut std::io::stderr())
                    .await?;
            println!(
                "{} records read, {} accepted, {} refused",
                summary.read, summary.accepted, summary.rejected
            );
            Ok(if summary.rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Datasets {
            command:
                DatasetsCommand::Suggest {
                    file,
                    name,
                    format,
                    out,
                },
        } => {
            let format = format
                .or_else(|| warden_gateway::ingest::Format::of(&file))
                .context("cannot tell the file's format from its name: give --format")?;
            let records =
                warden_gateway::ingest::read_records(&file, format, &serde_json::Value::Null)?;
            anyhow::ensure!(!records.is_empty(), "{} holds no record", file.display());
            let name = name.unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let s = warden_policy::suggest::suggest(
                &name,
                &records,
                format == warden_gateway::ingest::Format::Csv,
            );
            match out {
                Some(path) => std::fs::write(&path, &s.toml)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{}", s.toml),
            }
            eprintln!(
                "suggested {} fields from {} records",
                s.fields.len(),
                records.len().min(warden_policy::suggest::MAX_SAMPLE)
            );
            if let Some(p) = s.problem {
                eprintln!("not a valid contract yet (fill in the TODOs): {p}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Materialize { names } => {
            // An installation that exists: a first start here would create an admin whose
            // password nobody sees.
            state::open_existing(&config).await?;
            let aggregates: Vec<_> = config
                .lake
                .aggregates
                .iter()
                .filter(|a| names.is_empty() || names.contains(&a.name))
                .cloned()
                .collect();
            if let Some(unknown) = names
                .iter()
                .find(|n| !aggregates.iter().any(|a| &a.name == *n))
            {
                anyhow::bail!("no aggregate {unknown} in lake.aggregates");
            }
            let (state, _) =
                state::start(config, &env, Arc::new(warden_policy::SystemClock)).await?;
            if aggregates.is_empty() {
                println!("no aggregate table is configured ([[lake.aggregates]]): nothing to do");
                return Ok(ExitCode::SUCCESS);
            }
            let mut failed = false;
            for agg in &aggregates {
                match warden_gateway::materialize::materialize(&state, agg).await {
                    Ok(rows) => println!(
                        "{0}: {rows} rows written to the lake's aggregates/{0} (agg_{0} in SQL)",
                        agg.name
                    ),
                    Err(e) => {
                        eprintln!("{}: {}", agg.name, e.message);
                        failed = true;
                    }
                }
            }
            state.shutdown().await;
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Keys {
            command: KeysCommand::Rotate { from },
        } => {
            let done = cli::rotate_keys(&config, &from, &mut std::io::stderr()).await?;
            println!(
                "keys rotated: {} rewrapped, {} already under the new key",
                done.rewrapped, done.already
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::PublicKey,
        } => {
            let keys = cli::public_keys(&config).await?;
            for (kid, hex) in keys {
                println!("{kid} {hex}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A client of the running gateway (`--url`, or the configured listen address) with the
/// credentials of the environment.
async fn api_client(
    config: &Config,
    url: Option<String>,
    env: &HashMap<String, String>,
) -> anyhow::Result<warden_sdk::client::Client> {
    let url = url.unwrap_or_else(|| format!("http://{}", config.listen));
    let client = warden_sdk::client::Client::new(&url)?;
    Ok(
        match (
            env.get("WARDEN_TOKEN"),
            env.get("WARDEN_CLIENT_ID"),
            env.get("WARDEN_CLIENT_SECRET"),
        ) {
            (Some(t), _, _) => client.with_token(t.clone()),
            (None, Some(id), Some(secret)) => client.with_client_credentials(id, secret).await?,
            _ => anyhow::bail!("set WARDEN_TOKEN, or WARDEN_CLIENT_ID and WARDEN_CLIENT_SECRET"),
        },
    )
}

fn print_report(report: &VerifyReport, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else if report.ok {
        println!(
            "audit log intact: {} entries, {} signed checkpoints, head at {}",
            report.entries, report.checkpoints, report.head_seq
        );
        if report.unsigned_entries > 0 {
            println!(
                "accepted {} entries unsigned ({}..={}): nothing vouches that they were not rewritten or cut",
                report.unsigned_entries,
                report.signed_through + 1,
                report.head_seq
            );
        }
    } else {
        println!(
            "audit log does NOT verify: first bad entry {}: {}",
            report.first_bad_seq.unwrap_or_default(),
            report.reason.as_deref().unwrap_or("unknown")
        );
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn serve(
    mut config: Config,
    listen: Option<SocketAddr>,
    env: &HashMap<String, String>,
) -> anyhow::Result<ExitCode> {
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let addr = config.listen;
    let (state, first_start) =
        state::start(config, env, Arc::new(warden_policy::SystemClock)).await?;
    if let Some(first) = first_start {
        // Shown once, on the terminal only: never logged.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Warden initialised. The admin account (shown this once):"
        )?;
        writeln!(out, "  username: {}", first.admin_username)?;
        match &first.admin_password {
            Some(p) => writeln!(out, "  one-time password: {}", p.as_str())?,
            None => writeln!(out, "  password: from WARDEN_ADMIN_PASSWORD")?,
        }
        writeln!(
            out,
            "  TOTP enrolment URI (add it to an authenticator app): {}",
            first.totp_uri
        )?;
        writeln!(
            out,
            "The password works once: change it first, at POST /v1/auth/password"
        )?;
        out.flush()?;
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    warden_gateway::serve(state, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
