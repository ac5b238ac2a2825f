//! `--processes K`: the servers run in K child processes of this binary
//! (`mesh_bench --serve ...`), so each process holds only its share of the
//! N×(N−1) link sockets: without CAP_SYS_RESOURCE the open-files hard limit
//! (20 000 here) caps one process at N ≈ 98. The benchmark's own clients
//! and watchers stay in this process; RSS figures add up all processes.
//!
//! A child serves until its stdin closes (this process ended, however), so
//! none outlives the run.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};

use tokio::net::TcpListener;

/// The children, for their RSS.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// Picks N free loopback addresses (bound, noted, released for the children).
pub async fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, String> {
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
        listeners.push(l);
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(|e| e.to_string()))
        .collect()
}

/// Starts `k` children serving clusters in contiguous ranges; returns when
/// every one says it is listening.
pub fn spawn(k: usize, addrs: &[SocketAddr], services: usize, dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let n = addrs.len();
    let mut children = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    for p in 0..k {
        let (first, last) = (p * n / k, (p + 1) * n / k);
        let mut child = Command::new(&exe)
            .args(["--serve", &first.to_string(), &last.to_string()])
            .arg(services.to_string())
            .arg(dir)
            .arg(list.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", exe.display()))?;
        let out = child.stdout.take().ok_or("no stdout of a child")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| format!("reading a child's stdout: {e}"))?;
        if line.trim() != "ready" {
            return Err(format!(
                "child for clusters {first}..{last} failed: {line:?}"
            ));
        }
        children.push(child);
    }
    Ok(())
}

/// The children's pids.
pub fn pids() -> Vec<u32> {
    CHILDREN
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(Child::id)
        .collect()
}

/// `--serve FIRST LAST SERVICES DIR ADDRS`: serves clusters FIRST..LAST of
/// the comma-separated ADDRS until stdin closes.
pub async fn serve(argv: &[String]) -> Result<(), String> {
    let [first, last, services, dir, addrs] = argv else {
        return Err("--serve FIRST LAST SERVICES DIR ADDR,ADDR,...".into());
    };
    let num = |s: &String| s.parse::<usize>().map_err(|e| format!("{s:?}: {e}"));
    let (first, last, services) = (num(first)?, num(last)?, num(services)?);
    let addrs: Vec<SocketAddr> = addrs
        .split(',')
        .map(|a| a.parse().map_err(|e| format!("{a:?}: {e}")))
        .collect::<Result<_, String>>()?;
    super::raise_fd_limit(2 * (last - first) * addrs.len() + 1024);
    let defs = super::services(services);
    for (c, addr) in addrs.iter().enumerate().take(last).skip(first) {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("binding {addr}: {e}"))?;
        super::start_server(Path::new(dir), c, l, &addrs, defs.clone());
    }
    println!("ready");
    // Until the benchmark ends (its end of the pipe closes).
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}
