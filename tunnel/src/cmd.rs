//! Running the tools the tunnel drives (iproute2's `ip` and wireguard-tools'
//! `wg`, for the kernel backend only; links, addresses and routes otherwise
//! go over [`crate::netlink`]): a failure becomes a [`BackendError::Command`]
//! naming the action, the command line and its stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::backend::BackendError;

/// The Debian package that provides `cmd`.
fn package_of(cmd: &str) -> &'static str {
    match cmd {
        "wg" => "wireguard-tools",
        _ => "iproute2",
    }
}

/// Runs `cmd args` (with `stdin` fed to it); its stdout, or an error for
/// `action` naming the command line and its stderr.
pub(crate) fn run(
    cmd: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    action: &str,
) -> Result<String, BackendError> {
    let err = |detail: String| BackendError::Command {
        action: action.to_string(),
        detail,
    };
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(format!(
                "running `{cmd}`: {e} (install {})",
                package_of(cmd)
            ))
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .map_err(|e| err(format!("writing to `{cmd}`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for `{cmd}`: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
