//! `meshgate policy check FILE...`: reads NetworkPolicy / CiliumNetworkPolicy
//! / CiliumEgressGatewayPolicy YAML files as the agent would and prints what
//! each policy says, or every error (each names the file, the policy, the
//! field and the fix).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use meshgate_discovery::policy::{summary, PolicyRef};
use meshgate_egress::parse_policy_file;

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
    let mut seen_egress: BTreeMap<String, String> = BTreeMap::new();
    let mut count = 0;
    for f in files {
        let here = f.display().to_string();
        match parse_policy_file(f) {
            Ok(file) => {
                for p in file.identity {
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
                for p in file.egress {
                    if let Some(first) = seen_egress.insert(p.name.clone(), here.clone()) {
                        errors.push(format!(
                            "{here}: CiliumEgressGatewayPolicy/{} is also defined in {first}; \
                             the second would replace the first: keep one",
                            p.name
                        ));
                    }
                    out.push_str(&meshgate_egress::summary(&p));
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
             spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchPattern: \"a.**.example.com\"}]\n",
        );
        let (text, ok) = check(&[good.clone(), bad, good]);
        assert!(!ok);
        assert!(
            text.contains(
                "bad.yaml: CiliumNetworkPolicy shop/out: spec.egress[0].toFQDNs[0].matchPattern: \
                 \"a.**.example.com\": `**` is only allowed as a leading `**.`"
            ),
            "{text}"
        );
        assert!(text.contains("also defined in"), "{text}");
        assert!(text.ends_with("2 error(s)\n"), "{text}");
        let (text, ok) = check(&[dir.path().join("missing.yaml")]);
        assert!(!ok && text.contains("cannot read policy file"), "{text}");
    }

    #[test]
    fn check_shows_fqdn_and_dns_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = write(
            &dir,
            "fqdn.yaml",
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: shop}\n\
             spec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n\
             \x20 - toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: kube-system}}]\n\
             \x20   toPorts: [{ports: [{port: \"53\", protocol: UDP}], rules: {dns: [{matchPattern: \"*.example.com\"}]}}]\n\
             \x20 - toFQDNs: [{matchName: api.example.com}]\n\
             \x20   toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n\
             ---\napiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: api}\n\
             spec:\n  selectors: [{podSelector: {matchLabels: {app: web}}}]\n\
             \x20 destinationFQDNs: [{matchPattern: \"**.example.com\"}]\n\
             \x20 egressGateway: {nodeSelector: {matchLabels: {egress: \"true\"}}}\n",
        );
        let (text, ok) = check(std::slice::from_ref(&f));
        assert!(ok, "{text}");
        for line in [
            "  subject app=web,io.kubernetes.pod.namespace=shop; default deny: egress\n",
            "  egress allow to [io.kubernetes.pod.namespace=kube-system] on 53/udp\n",
            "    DNS lookups limited to pattern *.example.com\n",
            "  egress allow to addresses of name api.example.com on 443/tcp\n",
            "CiliumEgressGatewayPolicy/api: [pods app=web] to addresses of pattern **.example.com \
             via nodes [egress=true] (default-route interface)\n",
        ] {
            assert!(text.contains(line), "{text:?} should hold {line:?}");
        }
        assert!(text.ends_with("2 policies OK\n"), "{text}");
    }

    const EGRESS: &str = "apiVersion: cilium.io/v2\nkind: CiliumEgressGatewayPolicy\nmetadata: {name: out}\n\
         spec:\n  selectors: [{podSelector: {matchLabels: {app: web}}}]\n\
         \x20 destinationCIDRs: [0.0.0.0/0]\n  excludedCIDRs: [10.0.0.0/8]\n\
         \x20 egressGateways:\n  - {nodeSelector: {matchLabels: {egress: \"true\"}}, egressIP: 192.0.2.10}\n\
         \x20 - {nodeSelector: {matchLabels: {pool: b}}, interface: eg0}\n";

    #[test]
    fn check_reads_egress_gateway_policies_beside_identity_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mixed = write(
            &dir,
            "mixed.yaml",
            &format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: web, namespace: shop}}\nspec: {{podSelector: {{}}}}\n---\n{EGRESS}"
            ),
        );
        let (text, ok) = check(std::slice::from_ref(&mixed));
        assert!(ok, "{text}");
        assert!(text.contains("NetworkPolicy shop/web\n"), "{text}");
        assert!(
            text.contains(
                "CiliumEgressGatewayPolicy/out: [pods app=web] to 0.0.0.0/0 excluding 10.0.0.0/8 \
                 via nodes [egress=true] (egress IP 192.0.2.10) and nodes [pool=b] (interface eg0)\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("2 policies OK\n"), "{text}");

        // The same egress policy in two files, and a refused field.
        let bad = write(
            &dir,
            "bad.yaml",
            &EGRESS
                .replace("metadata: {name: out}", "metadata: {name: other}")
                .replace("interface: eg0", "interface: eg0, egressIP: 192.0.2.11"),
        );
        let (text, ok) = check(&[mixed.clone(), mixed, bad]);
        assert!(!ok);
        assert!(
            text.contains("CiliumEgressGatewayPolicy/out is also defined in"),
            "{text}"
        );
        assert!(
            text.contains(
                "bad.yaml: document 1: CiliumEgressGatewayPolicy/other: spec.egressGateways[1]: \
                 gives both egressIP and interface"
            ),
            "{text}"
        );
        assert!(text.ends_with("3 error(s)\n"), "{text}");
    }
}
