//! The machine a figure was measured on, and docs/benchmarks.md sections.

use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{self, output};

pub struct Machine {
    pub cpus: String,
    pub model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpus = output(&mut Command::new("nproc"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let kernel = output(Command::new("uname").arg("-r"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        Machine {
            cpus,
            model,
            kernel,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} CPUs ({}), Linux {}",
            self.cpus, self.model, self.kernel
        )
    }
}

/// The `p` quantile (0..=1) of `sorted` (ascending), nearest rank; NaN
/// when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The 1-minute load average: other work on the machine skews a figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn today() -> String {
    output(Command::new("date").args(["-u", "+%Y-%m-%d"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

const HEADER: &str = "# meshgate benchmarks\n\n\
Written by `cargo xtask bench NAME`; each figure stands beside its anchors,\n\
measured in the same run on the same machine, and is read as a ratio.\n";

/// Replaces `## NAME` (up to the next `## ` heading) in `text`, or appends it.
pub fn replace_section(text: &str, name: &str, body: &str) -> String {
    let heading = format!("## {name}");
    let section = format!("{heading}\n\n{}\n", body.trim_end());
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == heading) else {
        let mut out = text.trim_end().to_string();
        out.push_str("\n\n");
        out.push_str(&section);
        return out;
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out = lines[..start].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&section);
    if end < lines.len() {
        out.push('\n');
        out.push_str(&lines[end..].join("\n"));
        out.push('\n');
    }
    out
}

/// Writes section `name` of docs/benchmarks.md.
pub fn write_section(name: &str, body: &str) -> Result<()> {
    let path = util::repo_root().join("docs").join("benchmarks.md");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => HEADER.to_string(),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(&path, replace_section(&text, name, body))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote section `{name}` of {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn appends_then_replaces_in_place() {
        let text = "# t\n\nintro\n";
        let once = replace_section(text, "tunnel", "old");
        assert_eq!(once, "# t\n\nintro\n\n## tunnel\n\nold\n");
        let with_next = format!("{once}\n## mesh\n\nm\n");
        let twice = replace_section(&with_next, "tunnel", "new\n");
        assert_eq!(twice, "# t\n\nintro\n\n## tunnel\n\nnew\n\n## mesh\n\nm\n");
    }
}
