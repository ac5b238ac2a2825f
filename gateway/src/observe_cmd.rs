//! `meshgate observe` and `meshgate lab observe`: flow events from the
//! agents' observe sockets (see agent/observe.rs), filtered and printed as
//! lines or JSON. Several agents (a lab world) are merged: their recent
//! events in time order, then live ones as they come.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::agent::observe::{socket_path, Message, Request};
use crate::flow::{self, Filter, Flow};

/// Filters and output of `observe`.
#[derive(Debug, Args)]
pub struct ObserveOpts {
    /// Only flows from or to this pod: NAMESPACE/NAME, or NAME in any namespace.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only flows with this verdict: allowed or denied.
    #[arg(long)]
    pub verdict: Option<String>,
    /// Only drops for this reason (policy-ingress, source-spoofed, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// One JSON object a line instead of text.
    #[arg(long)]
    pub json: bool,
    /// After the recent flows, keep printing new ones.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Stop after this many matching flows (recent ones first, then new ones).
    #[arg(long, short = 'n')]
    pub count: Option<usize>,
    /// How many of the most recent matching flows the agent kept to print first.
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// Stop after this many seconds; with --count it is an error if fewer
    /// flows matched by then.
    #[arg(long)]
    pub timeout: Option<f64>,
}

/// `meshgate observe`.
#[derive(Debug, Args)]
pub struct ObserveArgs {
    /// The agent's state directory (its socket is observe.sock in it).
    #[arg(long, default_value = "/var/lib/meshgate")]
    pub state_dir: PathBuf,
    /// The agent's observe socket, if not in --state-dir.
    #[arg(long, conflicts_with = "state_dir")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ObserveOpts,
}

/// An agent to read from.
struct Source {
    /// `cluster/node` in the lab, else the socket path.
    label: String,
    socket: PathBuf,
    state_dir: Option<PathBuf>,
}

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    let source = match args.socket {
        Some(socket) => Source {
            label: socket.display().to_string(),
            socket,
            state_dir: None,
        },
        None => Source {
            label: args.state_dir.display().to_string(),
            socket: socket_path(&args.state_dir),
            state_dir: Some(args.state_dir),
        },
    };
    observe(vec![source], &args.opts, None)
}

/// `meshgate lab observe WORLD [CLUSTER/NODE]`.
pub fn run_lab(world: &str, node: Option<&str>, opts: &ObserveOpts) -> anyhow::Result<ExitCode> {
    let sources = meshgate_lab::observe::agent_dirs(world, node)?
        .into_iter()
        .map(|(label, dir)| Source {
            label,
            socket: socket_path(&dir),
            state_dir: Some(dir),
        })
        .collect();
    observe(sources, opts, Some(world))
}

/// Why there is no observe socket to connect to, and the fix.
fn explain(src: &Source, err: &std::io::Error, world: Option<&str>) -> anyhow::Error {
    let sock = src.socket.display();
    let Some(dir) = &src.state_dir else {
        let what = match err.kind() {
            std::io::ErrorKind::NotFound => "there is no such socket".to_string(),
            std::io::ErrorKind::ConnectionRefused => "nobody listens on it".to_string(),
            _ => format!("connecting failed ({err})"),
        };
        return anyhow::anyhow!(
            "cannot read flow events from {sock}: {what}. An agent with --datapath ebpf serves \
             them on observe.sock in its --state-dir: start one, or give its --state-dir"
        );
    };
    let status = dir.join("status.json");
    let ebpf_fix = match world {
        Some(_) => "add `datapath: ebpf` to the scenario and bring the world up again".to_string(),
        None => "restart the agent with --datapath ebpf".to_string(),
    };
    let start_fix = match world {
        Some(w) => format!("start it with `meshgate lab start {w}:{}`", src.label),
        None => format!(
            "start `meshgate agent --datapath ebpf --state-dir {}`",
            dir.display()
        ),
    };
    match std::fs::read_to_string(&status)
        .ok()
        .and_then(|t| serde_json::from_str::<meshgate_discovery::model::AgentStatus>(&t).ok())
    {
        None => anyhow::anyhow!(
            "no agent runs with state dir {} (no {}): {start_fix}",
            dir.display(),
            status.display()
        ),
        Some(s) if s.datapath.is_none() => anyhow::anyhow!(
            "the agent of {} runs the plain datapath: flow events come from the eBPF datapath \
             only; {ebpf_fix}",
            src.label
        ),
        Some(s) => anyhow::anyhow!(
            "the agent of {} (last pid {}) does not answer on {sock}: {err}; it is not running: \
             {start_fix}",
            src.label,
            s.pid
        ),
    }
}

enum Got {
    Msg(Message),
    Closed,
    Failed(String),
}

fn reader(idx: usize, stream: UnixStream, tx: mpsc::Sender<(usize, Got)>) {
    for line in BufReader::new(stream).lines() {
        let got = match line {
            Ok(l) => match serde_json::from_str::<Message>(&l) {
                Ok(m) => Got::Msg(m),
                Err(e) => Got::Failed(format!("unreadable line from the agent ({e}): {l}")),
            },
            Err(e) => Got::Failed(e.to_string()),
        };
        let stop = matches!(got, Got::Failed(_));
        if tx.send((idx, got)).is_err() || stop {
            return;
        }
    }
    let _ = tx.send((idx, Got::Closed));
}

struct Printer {
    json: bool,
    printed: usize,
}

impl Printer {
    fn print(&mut self, f: &Flow) -> anyhow::Result<()> {
        let text = if self.json {
            serde_json::to_string(f).context("encoding a flow")?
        } else {
            flow::line(f)
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the stream quietly.
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            std::process::exit(0);
        }
        self.printed += 1;
        Ok(())
    }
}

fn observe(
    sources: Vec<Source>,
    opts: &ObserveOpts,
    world: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let filter = Filter::new(opts.pod.clone(), opts.verdict.clone(), opts.reason.clone())
        .map_err(anyhow::Error::msg)?;
    if opts.count == Some(0) {
        bail!("--count 0 would print nothing: give 1 or more");
    }
    let timeout = match opts.timeout {
        Some(t) if !(t > 0.0 && t < 86_400.0) => {
            bail!("--timeout {t} is out of range: give seconds between 0 and 86400")
        }
        t => t.map(Duration::from_secs_f64),
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let follow = opts.follow || opts.count.is_some();
    let request = serde_json::to_string(&Request { follow }).context("encoding the request")?;
    let (tx, rx) = mpsc::channel();
    for (idx, src) in sources.iter().enumerate() {
        let mut stream = UnixStream::connect(&src.socket).map_err(|e| explain(src, &e, world))?;
        writeln!(stream, "{request}")
            .with_context(|| format!("asking {} for flow events", src.label))?;
        let tx = tx.clone();
        std::thread::spawn(move || reader(idx, stream, tx));
    }
    drop(tx);
    let recv = |deadline: Option<Instant>| match deadline {
        Some(d) => rx
            .recv_timeout(d.saturating_duration_since(Instant::now()))
            .ok(),
        None => rx.recv().ok(),
    };
    let mut printer = Printer {
        json: opts.json,
        printed: 0,
    };
    let done = |p: &Printer| opts.count.is_some_and(|n| p.printed >= n);
    // Phase 1: every agent's recent flows, merged in time order. Live flows
    // of an agent that is already done with its recent ones wait.
    let mut recent_done = vec![false; sources.len()];
    let mut open = sources.len();
    let mut recent: Vec<Flow> = Vec::new();
    let mut early: Vec<Flow> = Vec::new();
    while recent_done.iter().any(|d| !d) {
        let Some((idx, got)) = recv(deadline) else {
            break;
        };
        match got {
            Got::Msg(Message::Flow(f)) if recent_done[idx] => early.push(*f),
            Got::Msg(Message::Flow(f)) => recent.push(*f),
            Got::Msg(Message::RecentEnd) => recent_done[idx] = true,
            Got::Msg(Message::Lagged { missed }) => {
                eprintln!(
                    "meshgate: {}: missed {missed} flows (too slow)",
                    sources[idx].label
                )
            }
            Got::Closed => {
                recent_done[idx] = true;
                open -= 1;
            }
            Got::Failed(e) => bail!("reading flow events from {}: {e}", sources[idx].label),
        }
    }
    recent.sort_by_key(|f| f.unix_ms);
    let matching: Vec<&Flow> = recent.iter().filter(|f| filter.matches(f)).collect();
    for f in &matching[matching.len().saturating_sub(opts.last)..] {
        if done(&printer) {
            break;
        }
        printer.print(f)?;
    }
    if !follow || done(&printer) {
        return Ok(ExitCode::SUCCESS);
    }
    for f in early.iter().filter(|f| filter.matches(f)) {
        if done(&printer) {
            return Ok(ExitCode::SUCCESS);
        }
        printer.print(f)?;
    }
    // Phase 2: live flows as they come.
    while open > 0 && !done(&printer) {
        let Some((idx, got)) = recv(deadline) else {
            break;
        };
        match got {
            Got::Msg(Message::Flow(f)) if filter.matches(&f) => printer.print(&f)?,
            Got::Msg(Message::Lagged { missed }) => {
                eprintln!(
                    "meshgate: {}: missed {missed} flows (too slow)",
                    sources[idx].label
                )
            }
            Got::Msg(_) => {}
            Got::Closed => {
                eprintln!(
                    "meshgate: {} closed the stream (agent stopped?)",
                    sources[idx].label
                );
                open -= 1;
            }
            Got::Failed(e) => bail!("reading flow events from {}: {e}", sources[idx].label),
        }
    }
    if let Some(n) = opts.count {
        if printer.printed < n {
            let why = if open == 0 {
                "the agents closed their streams".to_string()
            } else {
                format!(
                    "--timeout {} s passed",
                    timeout.map_or(0.0, |t| t.as_secs_f64())
                )
            };
            bail!("only {} of {n} matching flows: {why}", printer.printed);
        }
    }
    if open == 0 {
        bail!("every agent closed its stream (stopped?)");
    }
    Ok(ExitCode::SUCCESS)
}
