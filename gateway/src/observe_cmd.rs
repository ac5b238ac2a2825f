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

use meshgate_agent::flow::{self, Filter, Flow};
use meshgate_agent::observe::{socket_path, Message, Request};

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
    /// `dns`: the DNS proxies' query events (name, type, verdict, the
    /// answer's addresses) instead of the datapath's flows.
    #[arg(long, value_parser = ["dns"])]
    pub protocol: Option<String>,
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
    if args.opts.protocol.is_some() {
        let dir = args.state_dir.clone();
        return crate::observe_dns::observe(vec![(dir.display().to_string(), dir)], &args.opts);
    }
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
    if opts.protocol.is_some() {
        return crate::observe_dns::observe(meshgate_lab::observe::agent_dirs(world, node)?, opts);
    }
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
        .and_then(|t| serde_json::from_str::<meshgate_agent::status::AgentStatus>(&t).ok())
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

struct Printer<'a> {
    json: bool,
    printed: usize,
    out: &'a mut dyn Write,
}

impl Printer<'_> {
    /// Prints a flow; `false` when the output is closed (`| head`), which
    /// ends the stream quietly.
    fn print(&mut self, f: &Flow) -> anyhow::Result<bool> {
        let text = if self.json {
            serde_json::to_string(f).context("encoding a flow")?
        } else {
            flow::line(f)
        };
        if writeln!(self.out, "{text}")
            .and_then(|_| self.out.flush())
            .is_err()
        {
            return Ok(false);
        }
        self.printed += 1;
        Ok(true)
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
    let mut streams = Vec::new();
    let mut failed = Vec::new();
    for src in &sources {
        let connected = UnixStream::connect(&src.socket)
            .map_err(|e| explain(src, &e, world))
            .and_then(|mut stream| {
                writeln!(stream, "{request}")
                    .with_context(|| format!("asking {} for flow events", src.label))?;
                Ok(stream)
            });
        match connected {
            Ok(stream) => streams.push((src.label.clone(), stream)),
            Err(e) => failed.push(e),
        }
    }
    // Several nodes: the ones that answer are shown, the others named.
    if streams.is_empty() || sources.len() == 1 {
        if let Some(first) = failed.into_iter().next() {
            return Err(first);
        }
    } else {
        for e in &failed {
            eprintln!("meshgate: skipping a node: {e:#}");
        }
    }
    let mut stdout = std::io::stdout().lock();
    merge(streams, &filter, opts, deadline, timeout, &mut stdout)
}

/// Reads the agents' answers (the request is sent), merges, filters and
/// prints them.
fn merge(
    streams: Vec<(String, UnixStream)>,
    filter: &Filter,
    opts: &ObserveOpts,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let follow = opts.follow || opts.count.is_some();
    let (tx, rx) = mpsc::channel();
    let mut labels = Vec::new();
    for (idx, (label, stream)) in streams.into_iter().enumerate() {
        labels.push(label);
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
        out,
    };
    let done = |p: &Printer| opts.count.is_some_and(|n| p.printed >= n);
    // Phase 1: every agent's recent flows, merged in time order. Live flows
    // of an agent that is already done with its recent ones wait.
    let mut recent_done = vec![false; labels.len()];
    let mut open = labels.len();
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
                    labels[idx]
                )
            }
            Got::Closed => {
                recent_done[idx] = true;
                open -= 1;
            }
            Got::Failed(e) => bail!("reading flow events from {}: {e}", labels[idx]),
        }
    }
    recent.sort_by_key(|f| f.unix_ms);
    let matching: Vec<&Flow> = recent.iter().filter(|f| filter.matches(f)).collect();
    for f in &matching[matching.len().saturating_sub(opts.last)..] {
        if done(&printer) {
            break;
        }
        if !printer.print(f)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if !follow || done(&printer) {
        return Ok(ExitCode::SUCCESS);
    }
    for f in early.iter().filter(|f| filter.matches(f)) {
        if done(&printer) {
            return Ok(ExitCode::SUCCESS);
        }
        if !printer.print(f)? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    // Phase 2: live flows as they come.
    while open > 0 && !done(&printer) {
        let Some((idx, got)) = recv(deadline) else {
            break;
        };
        match got {
            Got::Msg(Message::Flow(f)) if filter.matches(&f) => {
                if !printer.print(&f)? {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Got::Msg(Message::Lagged { missed }) => {
                eprintln!(
                    "meshgate: {}: missed {missed} flows (too slow)",
                    labels[idx]
                )
            }
            Got::Msg(_) => {}
            Got::Closed => {
                eprintln!(
                    "meshgate: {} closed the stream (agent stopped?)",
                    labels[idx]
                );
                open -= 1;
            }
            Got::Failed(e) => bail!("reading flow events from {}: {e}", labels[idx]),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_agent::ipcache::IpCache;
    use meshgate_ebpf::{FlowEvent, Point, Reason, Verdict};

    fn opts() -> ObserveOpts {
        ObserveOpts {
            pod: None,
            verdict: None,
            reason: None,
            json: true,
            follow: false,
            count: None,
            last: 20,
            timeout: Some(5.0),
            protocol: None,
        }
    }

    /// A flow line as an agent sends it; `port` marks it, `ms` is its time.
    fn line(port: u16, ms: u64, denied: bool) -> String {
        let ev = FlowEvent {
            ts_ns: 0,
            src: "10.1.0.10".parse().unwrap(),
            dst: "10.1.1.10".parse().unwrap(),
            src_identity: 65_792,
            dst_identity: 65_793,
            sport: port,
            dport: 80,
            proto: 6,
            verdict: Some(if denied {
                Verdict::Deny
            } else {
                Verdict::Allow
            }),
            reason: Some(if denied {
                Reason::PolicyIngress
            } else {
                Reason::None
            }),
            point: Some(Point::FromPod),
            ifindex: 1,
        };
        let f = flow::resolve(&ev, "c1/n1", ms, &IpCache::default());
        serde_json::to_string(&Message::Flow(Box::new(f))).unwrap() + "\n"
    }

    const END: &str = "{\"type\":\"recent_end\"}\n";

    /// Fake agents: each writes its text, then (`keep_open`) keeps its
    /// stream open for 3 s, as a following agent with nothing new does.
    fn agents(texts: &[String], keep_open: bool) -> Vec<(String, UnixStream)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let (ours, mut theirs) = UnixStream::pair().unwrap();
                let text = text.clone();
                std::thread::spawn(move || {
                    theirs.write_all(text.as_bytes()).unwrap();
                    if keep_open {
                        std::thread::sleep(Duration::from_secs(3));
                    }
                });
                (format!("c1/n{i}"), ours)
            })
            .collect()
    }

    fn run(
        streams: Vec<(String, UnixStream)>,
        o: &ObserveOpts,
    ) -> (anyhow::Result<ExitCode>, Vec<u16>) {
        let filter = Filter::new(o.pod.clone(), o.verdict.clone(), o.reason.clone()).unwrap();
        let timeout = o.timeout.map(Duration::from_secs_f64);
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut out = Vec::new();
        let r = merge(streams, &filter, o, deadline, timeout, &mut out);
        let ports = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Flow>(l).unwrap().src.port)
            .collect();
        (r, ports)
    }

    #[test]
    fn recent_flows_of_several_agents_merge_in_time_order_and_filter() {
        let a = [line(1, 10, false), line(3, 30, true), line(5, 50, false)].concat() + END;
        let b = [line(2, 20, true), line(4, 40, false), line(6, 60, true)].concat() + END;
        let (r, ports) = run(agents(&[a.clone(), b.clone()], false), &opts());
        r.unwrap();
        assert_eq!(ports, [1, 2, 3, 4, 5, 6]);
        let mut o = opts();
        o.last = 2;
        let (_, ports) = run(agents(&[a.clone(), b.clone()], false), &o);
        assert_eq!(ports, [5, 6], "the last two");
        o.verdict = Some("denied".into());
        let (_, ports) = run(agents(&[a, b], false), &o);
        assert_eq!(ports, [3, 6], "the last two denied");
    }

    #[test]
    fn count_waits_for_live_flows_and_a_timeout_says_how_many_came() {
        // recent: 1; then live: 2 (filtered out), 3.
        let text = line(1, 10, true) + END + &line(2, 20, false) + &line(3, 30, true);
        let mut o = opts();
        o.count = Some(2);
        o.verdict = Some("denied".into());
        let (r, ports) = run(agents(std::slice::from_ref(&text), true), &o);
        r.unwrap();
        assert_eq!(ports, [1, 3]);
        o.count = Some(3);
        o.timeout = Some(0.5);
        let (r, ports) = run(agents(&[text], true), &o);
        assert_eq!(ports, [1, 3]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("only 2 of 3") && e.contains("--timeout 0.5"),
            "{e}"
        );
    }
}
