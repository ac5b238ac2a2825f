//! One iperf3 TCP stream between two network namespaces.

use std::process::Stdio;

use anyhow::{Context, Result};

use crate::util::{self, in_netns, output, ChildGuard};

pub const SECONDS: u32 = 10;
const PORT: u16 = 5201;

/// Bits per second the receiver saw for one TCP stream from `client_ns` to
/// `server_ip` (in `server_ns`), `SECONDS` long.
pub fn tcp_stream(server_ns: &str, client_ns: &str, server_ip: &str) -> Result<f64> {
    let mut server = ChildGuard::spawn(
        in_netns(server_ns, "iperf3")
            .args(["-s", "-1", "-B", server_ip])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        &format!("iperf3 server in {server_ns}"),
    )?;
    util::wait_tcp_listen(server_ns, PORT, &mut server)?;
    eprintln!("iperf3: {client_ns} -> {server_ns} ({server_ip}), {SECONDS} s");
    let json = output(in_netns(client_ns, "iperf3").args([
        "-c",
        server_ip,
        "-t",
        &SECONDS.to_string(),
        "-J",
    ]))
    .with_context(|| format!("iperf3 from {client_ns} to {server_ip}"))?;
    received_bps(&json)
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
    use super::received_bps;

    #[test]
    fn reads_received_rate() {
        let json = r#"{"end":{"sum_sent":{"bits_per_second":2.0e9},"sum_received":{"bits_per_second":1.5e9}}}"#;
        assert!(matches!(received_bps(json), Ok(bps) if (bps - 1.5e9).abs() < 1.0));
        assert!(received_bps(r#"{"error":"unable to connect"}"#).is_err());
    }
}
