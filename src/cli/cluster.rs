//! `polyhost cluster ...`: the commands panels and operators run against
//! the cluster's etcd, and `cluster front` (long-running). Exit codes:
//!
//! - 0: done;
//! - 1: refused (invalid site file, unknown or full node, root missing,
//!   placement changed meanwhile); the reason on stderr;
//! - 2: cannot run (etcd unreachable, bad arguments, unreadable file);
//! - 3: a move did not finish in time and the site was put back on its
//!   old node (what was seen on stderr).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::cluster::control::{Cluster, ClusterError, MoveOptions, MoveOutcome, Status};
use crate::cluster::etcd::EtcdSettings;
use crate::cluster::front::haproxy_config::{self, NodeAddr};
use crate::cluster::front::{self, haproxy::Runtime, FrontOptions};

/// Where etcd is (else `[cluster]` of `--config`, else 127.0.0.1:2379).
#[derive(Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd client URL (repeat for several members).
    #[arg(long = "etcd", value_name = "URL", global = true)]
    pub endpoints: Vec<String>,
    /// Key prefix [default: /polyhost/].
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// PEM CA bundle for https etcd endpoints.
    #[arg(long, value_name = "FILE", global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, value_name = "FILE", global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "FILE", global = true)]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (auth enabled on etcd).
    #[arg(long, global = true)]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password (kept out of argv).
    #[arg(long, value_name = "FILE", global = true)]
    pub etcd_password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Validate FILE as the vhost file NAME.toml and store it as sites/NAME.
    Put { name: String, file: PathBuf },
    /// Delete sites/NAME and placement/NAME (the nodes stop it).
    Remove { name: String },
    /// Place a site on a node (first placement; use `move` for a served site).
    Place {
        name: String,
        node: String,
        /// Never run on two nodes at once (moves stop, then start).
        #[arg(long)]
        singleton: bool,
    },
    /// Move a site: the new node starts it, the fronts switch, the old drains.
    Move {
        name: String,
        node: String,
        #[command(flatten)]
        timeouts: Timeouts,
    },
    /// Move every site placed on NODE to other nodes (capacity-aware).
    Drain {
        node: String,
        #[command(flatten)]
        timeouts: Timeouts,
    },
    /// Nodes, sites (placement, state and errors per node), fronts.
    Status {
        /// The status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep an HAProxy's maps current and run the failover controller.
    Front(FrontArgs),
    /// Print an haproxy.cfg for the front: one backend per node (the
    /// --node given, else the live nodes in etcd), both maps.
    HaproxyConfig(HaproxyConfigArgs),
}

#[derive(Args, Debug)]
pub struct HaproxyConfigArgs {
    /// Plain HTTP listen address.
    #[arg(long, default_value = "127.0.0.1:8180")]
    pub listen: String,
    /// TLS (SNI passthrough) listen address; none without it.
    #[arg(long)]
    pub listen_tls: Option<String>,
    /// Where `cluster front --map-dir` keeps the maps.
    #[arg(long, value_name = "DIR")]
    pub map_dir: PathBuf,
    /// The runtime API socket `cluster front --haproxy-socket` talks to.
    #[arg(long, value_name = "PATH")]
    pub stats_socket: PathBuf,
    /// NAME=HOST:PORT[,TLSHOST:PORT] (repeatable) instead of etcd's nodes.
    #[arg(long = "node", value_name = "NODE")]
    pub nodes: Vec<String>,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct Timeouts {
    /// Seconds the target node may take to report the site ready.
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
    /// Seconds every front may take to route the site to the target.
    #[arg(long, default_value_t = 30)]
    pub switch_timeout: u64,
}

#[derive(Args, Debug)]
pub struct FrontArgs {
    /// HAProxy's stats socket (`level admin`), or its master socket with --master.
    #[arg(long, value_name = "PATH")]
    pub haproxy_socket: PathBuf,
    /// The socket is HAProxy's master CLI (commands go to worker 1).
    #[arg(long)]
    pub master: bool,
    /// Where hosts.map and wildcards.map live (the paths haproxy.cfg names).
    #[arg(long, value_name = "DIR")]
    pub map_dir: PathBuf,
    /// This front's name in fronts/ [default: the host name].
    #[arg(long)]
    pub id: Option<String>,
    /// Seconds of the front's lease (and of its controller leadership).
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: i64,
    /// Seconds a singleton site's node must be gone before re-placement.
    #[arg(long, default_value_t = 15)]
    pub singleton_grace: u64,
}

/// Runs one `polyhost cluster` command.
pub fn run(config: Option<&Path>, args: ClusterArgs) -> ExitCode {
    let settings = match settings(config, &args.etcd) {
        Ok(s) => s,
        Err(e) => return fail(&format!("{e:#}"), 2),
    };
    if matches!(args.command, ClusterCommand::Front(_)) {
        super::init_logging("info");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 2),
    };
    runtime.block_on(command(settings, args.command))
}

async fn command(settings: EtcdSettings, command: ClusterCommand) -> ExitCode {
    if let ClusterCommand::Front(front) = command {
        return run_front(settings, front).await;
    }
    if let ClusterCommand::HaproxyConfig(args) = &command {
        if !args.nodes.is_empty() {
            return match given_nodes(&args.nodes) {
                Ok(nodes) => {
                    print!("{}", haproxy_config::render(&layout(args), &nodes));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, 2),
            };
        }
    }
    let mut cluster = match Cluster::connect(&settings).await {
        Ok(c) => c,
        Err(e) => return fail(&format!("{e:#}: is etcd running?"), 2),
    };
    let result = match command {
        ClusterCommand::Put { name, file } => put(&mut cluster, &name, &file).await,
        ClusterCommand::Remove { name } => match cluster.remove_site(&name).await {
            Ok(true) => Ok(format!("removed {name}")),
            Ok(false) => Err(ClusterError::Refused(format!("no site {name} in etcd"))),
            Err(e) => Err(e),
        },
        ClusterCommand::Place {
            name,
            node,
            singleton,
        } => cluster
            .place(&name, &node, singleton)
            .await
            .map(|()| format!("placed {name} on {node}")),
        ClusterCommand::Move {
            name,
            node,
            timeouts,
        } => cluster
            .move_site(&name, &node, timeouts.into())
            .await
            .map(moved(&name)),
        ClusterCommand::Drain { node, timeouts } => {
            return drain(&mut cluster, &node, timeouts).await
        }
        ClusterCommand::Status { json } => cluster.snapshot().await.map(|snap| {
            let status = Status::of(&snap);
            if json {
                serde_json::to_string_pretty(&status).expect("json")
            } else {
                status.render()
            }
        }),
        ClusterCommand::HaproxyConfig(args) => haproxy_config(&mut cluster, &args).await,
        ClusterCommand::Front(_) => unreachable!("handled above"),
    };
    match result {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string(), exit_code(&e)),
    }
}

fn layout(args: &HaproxyConfigArgs) -> haproxy_config::Layout<'_> {
    haproxy_config::Layout {
        listen: &args.listen,
        listen_tls: args.listen_tls.as_deref(),
        map_dir: &args.map_dir,
        stats_socket: &args.stats_socket,
    }
}

/// `NAME=HOST:PORT[,TLSHOST:PORT]` each.
fn given_nodes(given: &[String]) -> Result<Vec<NodeAddr>, String> {
    given
        .iter()
        .map(|g| {
            let (name, addrs) = g
                .split_once('=')
                .ok_or_else(|| format!("--node {g}: expected NAME=HOST:PORT[,TLSHOST:PORT]"))?;
            let (http, tls) = match addrs.split_once(',') {
                Some((h, t)) => (h, Some(t.to_owned())),
                None => (addrs, None),
            };
            Ok(NodeAddr {
                name: name.to_owned(),
                http: http.to_owned(),
                tls,
            })
        })
        .collect()
}

async fn haproxy_config(
    cluster: &mut Cluster,
    args: &HaproxyConfigArgs,
) -> Result<String, ClusterError> {
    let snap = cluster.snapshot().await?;
    let nodes: Vec<NodeAddr> = snap
        .nodes
        .iter()
        .map(|(name, n)| NodeAddr {
            name: name.clone(),
            http: n.advertise.clone(),
            tls: n.advertise_tls.clone(),
        })
        .collect();
    Ok(haproxy_config::render(&layout(args), &nodes))
}

async fn put(cluster: &mut Cluster, name: &str, file: &Path) -> Result<String, ClusterError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ClusterError::Refused(format!("{}: cannot read: {e}", file.display())))?;
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    cluster.put_site(name, &text, base).await?;
    Ok(format!("stored sites/{name}"))
}

fn moved(name: &str) -> impl Fn(MoveOutcome) -> String + '_ {
    move |outcome| match outcome {
        MoveOutcome::Unchanged => format!("{name} is already on that node"),
        MoveOutcome::Moved { from, to } => format!("moved {name} from {from} to {to}"),
    }
}

async fn drain(cluster: &mut Cluster, node: &str, timeouts: Timeouts) -> ExitCode {
    let mut worst = 0u8;
    for (site, result) in cluster.drain(node, timeouts.into()).await {
        match result {
            Ok(outcome) => println!("{}", moved(&site)(outcome)),
            Err(e) => {
                eprintln!("polyhost cluster drain: {site}: {e}");
                worst = worst.max(exit_code(&e));
            }
        }
    }
    ExitCode::from(worst)
}

async fn run_front(settings: EtcdSettings, args: FrontArgs) -> ExitCode {
    let id = args.id.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_or_else(|_| "front".into(), |h| h.trim().to_owned())
    });
    let options = FrontOptions {
        etcd: settings,
        haproxy: Runtime {
            socket: args.haproxy_socket,
            master: args.master,
        },
        map_dir: args.map_dir,
        id,
        lease_ttl: args.lease_ttl.max(2),
        singleton_grace: Duration::from_secs(args.singleton_grace),
    };
    let stop = CancellationToken::new();
    match super::Signals::install() {
        Ok(signals) => {
            tokio::spawn(super::stop_on_signal(
                signals.term,
                signals.int,
                stop.clone(),
            ));
        }
        Err(e) => return fail(&format!("{e:#}"), 2),
    }
    front::run(options, stop).await;
    ExitCode::SUCCESS
}

impl From<Timeouts> for MoveOptions {
    fn from(t: Timeouts) -> MoveOptions {
        MoveOptions {
            ready_timeout: Duration::from_secs(t.ready_timeout),
            switch_timeout: Duration::from_secs(t.switch_timeout),
        }
    }
}

fn exit_code(e: &ClusterError) -> u8 {
    match e {
        ClusterError::Refused(_) => 1,
        ClusterError::Etcd(_) => 2,
        ClusterError::RolledBack(_) => 3,
    }
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("polyhost cluster: {msg}");
    ExitCode::from(code)
}

/// The etcd settings: the flags, else `[cluster]` of the `--config` file
/// (etcd, prefix, TLS, user and password, as the node uses them), else the
/// defaults.
fn settings(config: Option<&Path>, args: &EtcdArgs) -> anyhow::Result<EtcdSettings> {
    let mut s = match config.filter(|_| args.endpoints.is_empty()) {
        Some(file) => from_config(file)?,
        None => EtcdSettings::default(),
    };
    if !args.endpoints.is_empty() {
        s.endpoints = args.endpoints.clone();
    }
    if let Some(p) = &args.prefix {
        s.prefix = p.clone();
    }
    if args.etcd_cert.is_some() != args.etcd_key.is_some() {
        anyhow::bail!("--etcd-cert and --etcd-key go together");
    }
    if args.etcd_user.is_some() != args.etcd_password_file.is_some() {
        anyhow::bail!("--etcd-user and --etcd-password-file go together");
    }
    if args.etcd_ca.is_some() {
        s.ca_file = args.etcd_ca.clone();
    }
    if args.etcd_cert.is_some() {
        s.cert_file = args.etcd_cert.clone();
        s.key_file = args.etcd_key.clone();
    }
    if let (Some(user), Some(file)) = (&args.etcd_user, &args.etcd_password_file) {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
        s.user = Some(user.clone());
        s.password = Some(text.trim_end_matches(['\r', '\n']).to_owned());
    }
    Ok(s)
}

/// `[cluster]` of a polyhost.toml, validated as `polyhost serve` does.
fn from_config(file: &Path) -> anyhow::Result<EtcdSettings> {
    let server = crate::config::load_server(file).map_err(|e| anyhow::anyhow!("{e}"))?;
    match &server.cluster {
        Some(c) => Ok(crate::cluster::node::settings(c)),
        None => anyhow::bail!("{}: no [cluster] table: give --etcd URL", file.display()),
    }
}
