//! iperf3 between two network namespaces: TCP streams and small UDP
//! datagrams, with the machine's CPU time over each run.

use std::process::Stdio;

use anyhow::{Context, Result};

use crate::util::{self, in_netns, output, ChildGuard};

pub const SECONDS: u32 = 10;
const PORT: u16 = 5201;

/// Bits per second the receiver saw for one TCP stream from `client_ns` to
/// `server_ip` (in `server_ns`), `SECONDS` long.
pub fn tcp_stream(server_ns: &str, client_ns: &str, server_ip: &str) -> Result<f64> {
    let json = client(server_ns, client_ns, server_ip, &[])?;
    received_bps(&json)
}

/// What one run measured, with the whole machine's CPU time meanwhile.
pub struct Run {
    pub bps: f64,
    /// Busy CPU seconds of every core (user, system, softirq...) over the run.
    pub cpu_seconds: f64,
}

impl Run {
    /// CPU seconds per gigabit moved.
    pub fn cpu_per_gbit(&self) -> f64 {
        self.cpu_seconds / (self.bps * f64::from(SECONDS) / 1e9)
    }
}

/// `parallel` TCP streams; bits per second summed, and the CPU time.
pub fn tcp_streams(
    server_ns: &str,
    client_ns: &str,
    server_ip: &str,
    parallel: u32,
) -> Result<Run> {
    let before = busy_cpu_seconds()?;
    let json = client(
        server_ns,
        client_ns,
        server_ip,
        &["-P", &parallel.to_string()],
    )?;
    let cpu_seconds = busy_cpu_seconds()? - before;
    Ok(Run {
        bps: received_bps(&json)?,
        cpu_seconds,
    })
}

/// Datagrams per second received of `len`-byte UDP payloads sent as fast
/// as the client can.
pub fn udp_pps(server_ns: &str, client_ns: &str, server_ip: &str, len: u32) -> Result<f64> {
    let json = client(
        server_ns,
        client_ns,
        server_ip,
        &["-u", "-b", "0", "-l", &len.to_string()],
    )?;
    received_pps(&json)
}

fn client(server_ns: &str, client_ns: &str, server_ip: &str, extra: &[&str]) -> Result<String> {
    let mut server = ChildGuard::spawn(
        in_netns(server_ns, "iperf3")
            .args(["-s", "-1", "-B", server_ip])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        &format!("iperf3 server in {server_ns}"),
    )?;
    util::wait_tcp_listen(server_ns, PORT, &mut server)?;
    eprintln!(
        "iperf3 {}: {client_ns} -> {server_ns} ({server_ip}), {SECONDS} s",
        extra.join(" ")
    );
    let json = output(
        in_netns(client_ns, "iperf3")
            .args(["-c", server_ip, "-t", &SECONDS.to_string(), "-J"])
            .args(extra),
    )
    .with_context(|| format!("iperf3 from {client_ns} to {server_ip}"))?;
    drop(server);
    Ok(json)
}

/// Busy CPU time of all cores since boot, from /proc/stat.
pub fn busy_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    busy_from_stat(&stat)
}

fn busy_from_stat(stat: &str) -> Result<f64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal...
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((total - idle) / hz)
}

/// Datagrams per second the server received, from a UDP `iperf3 -J` run.
pub fn received_pps(json: &str) -> Result<f64> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("iperf3 -J did not print JSON")?;
    if let Some(err) = value.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3 reported: {err}");
    }
    let get = |p: &str| {
        value
            .pointer(p)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("iperf3 JSON has no {p}"))
    };
    let packets = get("/end/sum/packets")?;
    let lost = get("/end/sum/lost_packets")?;
    let seconds = get("/end/sum/seconds")?;
    Ok((packets - lost).max(0.0) / seconds.max(1e-9))
}

/// `end.sum_received.bits_per_second` of `iperf3 -J` output.
pub fn received_bps(json: &str) -> Result<f64> {
    let value: serde_json::Value =
        serde_json::from_str(json).context("iperf3 -J did not print JSON")?;
    if let Some(err) = value.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3 reported: {err}");
    }
    value
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")
}

#[cfg(test)]
mod tests {
    use super::{busy_from_stat, received_bps, received_pps};

    #[test]
    fn reads_udp_rate_and_cpu() {
        let json = r#"{"end":{"sum":{"packets":1000,"lost_packets":100,"seconds":2.0}}}"#;
        assert!(matches!(received_pps(json), Ok(pps) if (pps - 450.0).abs() < 1e-6));
        let stat = "cpu  100 0 50 1000 10 0 50 0 0 0\ncpu0 1 2 3\n";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!(matches!(busy_from_stat(stat), Ok(s) if (s - 200.0 / hz).abs() < 1e-9));
    }

    #[test]
    fn reads_received_rate() {
        let json = r#"{"end":{"sum_sent":{"bits_per_second":2.0e9},"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert!(matches!(received_bps(json), Ok(bps) if (bps - 1.5e9).abs() < 1.0));
        assert!(received_bps(r#"{"error":"unable to connect"}"#).is_err());
    }
}
