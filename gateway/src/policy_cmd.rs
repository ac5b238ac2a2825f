//! `meshgate policy check FILE...`: reads NetworkPolicy / CiliumNetworkPolicy
//! YAML files as the agent would and prints what each policy says, or every
//! error (each names the file, the policy, the field and the fix).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use meshgate_discovery::policy::{parse_policy_file, summary, PolicyRef};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse policy files and print a summary of each policy, or the errors.
    Check {
        /// YAML files (one or more `---` separated documents each).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// The report text and whether every file was read without error (pure
/// but for reading the files).
pub fn check(files: &[PathBuf]) -> (String, bool) {
    let mut out = String::new();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<PolicyRef, String> = BTreeMap::new();
    let mut count = 0;
    for f in files {
        match parse_policy_file(f) {
            Ok(policies) => {
                for p in policies {
                    let here = f.display().to_string();
                    if let Some(first) = seen.insert(p.id.clone(), here.clone()) {
                        errors.push(format!(
                            "{here}: {} is also defined in {first}; the second would replace \
                             the first: keep one",
                            p.id
                        ));
                    }
                    out.push_str(&summary(&p));
                    count += 1;
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        out.push_str(&format!("{count} policies OK\n"));
        (out, true)
    } else {
        let mut text = String::new();
        for e in &errors {
            text.push_str(&format!("error: {e}\n"));
        }
        text.push_str(&format!("{} error(s)\n", errors.len()));
        (text, false)
    }
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check { files } => {
            let (text, ok) = check(&files);
            if ok {
                #[allow(clippy::print_stdout)]
                {
                    print!("{text}");
                }
                Ok(ExitCode::SUCCESS)
            } else {
                eprint!("{text}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write test file");
        p
    }

    #[test]
    fn check_summarises_good_files_and_lists_every_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = write(
            &dir,
            "good.yaml",
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n",
        );
        let (text, ok) = check(std::slice::from_ref(&good));
        assert!(ok, "{text}");
        assert!(text.contains("CiliumNetworkPolicy shop/web"), "{text}");
        assert!(
            text.contains("ingress allow from any peer on 80/tcp"),
            "{text}"
        );
        assert!(text.ends_with("1 policies OK\n"), "{text}");

        let bad = write(
            &dir,
            "bad.yaml",
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: out, namespace: shop}\n\
             spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n",
        );
        let (text, ok) = check(&[good.clone(), bad, good]);
        assert!(!ok);
        assert!(
            text.contains("bad.yaml: CiliumNetworkPolicy shop/out: spec.egress[0].toFQDNs"),
            "{text}"
        );
        assert!(text.contains("also defined in"), "{text}");
        assert!(text.ends_with("2 error(s)\n"), "{text}");
        let (text, ok) = check(&[dir.path().join("missing.yaml")]);
        assert!(!ok && text.contains("cannot read policy file"), "{text}");
    }
}
