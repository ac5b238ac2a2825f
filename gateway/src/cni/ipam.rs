//! Delegation to the IPAM plugin the config names (`ipam.type`, e.g.
//! `host-local`), found in `CNI_PATH`: run with the same environment and
//! the whole network config on stdin, as the spec's delegation says.
//! `host-local` keeps each allocation as a file under its data directory,
//! so a crash never hands one IP to two pods.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::config::{code, CniError, Env};

/// The IPAM plugin's executable.
fn find(env: &Env, kind: &str) -> Result<PathBuf, CniError> {
    if kind.is_empty() || kind.contains('/') {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "ipam.type is not a plugin name",
            format!("{kind:?}: name an IPAM plugin in CNI_PATH, such as host-local"),
        ));
    }
    env.path
        .iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("the IPAM plugin {kind} is not in CNI_PATH"),
                format!(
                    "looked in {:?}; install it (Debian: containernetworking-plugins, in \
                     /usr/lib/cni) and put its directory in CNI_PATH",
                    env.path
                ),
            )
        })
}

/// Runs the IPAM plugin for `command` ("ADD" or "DEL"); its stdout.
fn run(env: &Env, kind: &str, command: &str, raw: &Value) -> Result<Vec<u8>, CniError> {
    let exe = find(env, kind)?;
    let io = |what: &str, e: std::io::Error| {
        CniError::new(
            code::IO,
            format!("running the IPAM plugin {kind}"),
            format!("{what} {}: {e}", exe.display()),
        )
    };
    // The only process this plugin starts: the IPAM plugin, as the spec's
    // delegation requires (there is no crate for it).
    #[allow(clippy::disallowed_methods)]
    let mut child = Command::new(&exe)
        .env("CNI_COMMAND", command)
        .env("CNI_ARGS", args_for_ipam(env))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("starting", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(raw.to_string().as_bytes())
            .map_err(|e| io("writing the config to", e))?;
    }
    let out = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    if !out.status.success() {
        let said: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let msg = said["msg"].as_str().unwrap_or("").to_string();
        let details = said["details"].as_str().unwrap_or("").to_string();
        return Err(CniError::new(
            said["code"]
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(code::IO),
            format!("the IPAM plugin {kind} failed on {command}: {msg}"),
            format!(
                "{details}{}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            ),
        ));
    }
    Ok(out.stdout)
}

/// `CNI_ARGS` for the IPAM plugin: the runtime's, with `IgnoreUnknown=1`
/// (as kubelet sends them), since `host-local` refuses arguments it does
/// not know (`K8S_POD_NAME`) without it.
fn args_for_ipam(env: &Env) -> String {
    let mut args = env.args.clone();
    args.entry("IgnoreUnknown".to_string())
        .or_insert_with(|| "1".to_string());
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The pod's address from the IPAM plugin.
pub fn add(env: &Env, kind: &str, raw: &Value) -> Result<Ipv4Addr, CniError> {
    let out = run(env, kind, "ADD", raw)?;
    let result: Value = serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the IPAM plugin {kind} answered something that is not JSON"),
            e.to_string(),
        )
    })?;
    first_ipv4(&result).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("the IPAM plugin {kind} gave no IPv4 address"),
            format!("its result: {result}; give its ranges an IPv4 subnet (the node's pod CIDR)"),
        )
    })
}

/// Releases the container's address (nothing held is no error).
pub fn del(env: &Env, kind: &str, raw: &Value) -> Result<(), CniError> {
    run(env, kind, "DEL", raw).map(drop)
}

/// The first IPv4 address of a result's `ips` (`"10.1.0.5/24"`).
pub fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let text = ip["address"].as_str()?;
        text.split('/').next()?.parse::<Ipv4Addr>().ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_ipv4_address_of_a_result() {
        let r: Value = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"},{"address":"10.1.0.5/24","gateway":"10.1.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(first_ipv4(&r), Some("10.1.0.5".parse().unwrap()));
        assert_eq!(first_ipv4(&serde_json::json!({"ips": []})), None);
    }
}
