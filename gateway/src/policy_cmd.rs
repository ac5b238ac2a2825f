//! `meshgate policy check FILE...`: reads NetworkPolicy / CiliumNetworkPolicy
//! / CiliumClusterwideNetworkPolicy / CiliumEgressGatewayPolicy YAML files as
//! the agent would and prints what each policy says, every warning (a
//! selector that can never match, an overridden namespace, a deprecated
//! field, an L7 part not enforced), and every error of every file (each
//! names the file, the policy, the field and the fix). Exits non-zero on an
//! error; `--strict-policy` makes warnings errors, `--l7 ignore` reads the
//! L3/L4 part of rules with HTTP/Kafka rules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use meshgate_agent::config::L7Arg;
use meshgate_model::policy::{summary, ParseOptions, PolicyRef};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse policy files and print a summary of each policy, its warnings,
    /// or every error.
    Check {
        /// YAML files (one or more `---` separated documents each).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Refuse policies with warnings (as the agent's --strict-policy).
        #[arg(long)]
        strict_policy: bool,
        /// HTTP / Kafka (L7) rules: refuse the policy, or ignore the L7 part.
        #[arg(long, value_enum, default_value_t = L7Arg::Refuse)]
        l7: L7Arg,
    },
}

/// The report text and whether every file was read without error (pure
/// but for reading the files).
pub fn check(files: &[PathBuf], opts: &ParseOptions) -> (String, bool) {
    let mut out = String::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut seen: BTreeMap<PolicyRef, String> = BTreeMap::new();
    let mut seen_egress: BTreeMap<String, String> = BTreeMap::new();
    let mut count = 0;
    for f in files {
        let here = f.display().to_string();
        let report = meshgate_egress::parse_policy_file_report(f, opts);
        errors.extend(report.errors.iter().map(|e| e.to_string()));
        warnings.extend(report.warnings);
        for p in report.file.identity {
            if let Some(first) = seen.insert(p.id.clone(), here.clone()) {
                errors.push(format!(
                    "{here}: {} is also defined in {first}; the second would replace the \
                     first: keep one",
                    p.id
                ));
            }
            out.push_str(&summary(&p));
            count += 1;
        }
        for p in report.file.egress {
            if let Some(first) = seen_egress.insert(p.name.clone(), here.clone()) {
                errors.push(format!(
                    "{here}: CiliumEgressGatewayPolicy/{} is also defined in {first}; the \
                     second would replace the first: keep one",
                    p.name
                ));
            }
            out.push_str(&meshgate_egress::summary(&p));
            count += 1;
        }
    }
    let mut notes = String::new();
    for w in &warnings {
        notes.push_str(&format!("warning: {w}\n"));
    }
    let w = if warnings.is_empty() {
        String::new()
    } else {
        format!(", {} warning(s)", warnings.len())
    };
    if errors.is_empty() {
        out.push_str(&notes);
        out.push_str(&format!("{count} policies OK{w}\n"));
        (out, true)
    } else {
        let mut text = String::new();
        for e in &errors {
            text.push_str(&format!("error: {e}\n"));
        }
        text.push_str(&notes);
        text.push_str(&format!("{} error(s){w}\n", errors.len()));
        (text, false)
    }
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check {
            files,
            strict_policy,
            l7,
        } => {
            let opts = ParseOptions {
                strict: strict_policy,
                l7: l7.into(),
            };
            let (text, ok) = check(&files, &opts);
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
    use meshgate_model::policy::L7Mode;

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
        let (text, ok) = check(std::slice::from_ref(&good), &ParseOptions::default());
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
        let (text, ok) = check(&[good.clone(), bad, good], &ParseOptions::default());
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
        let (text, ok) = check(&[dir.path().join("missing.yaml")], &ParseOptions::default());
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
        let (text, ok) = check(std::slice::from_ref(&f), &ParseOptions::default());
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
        let (text, ok) = check(std::slice::from_ref(&mixed), &ParseOptions::default());
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
        let (text, ok) = check(&[mixed.clone(), mixed, bad], &ParseOptions::default());
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

    #[test]
    fn check_reports_every_problem_warnings_and_the_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cnp = |name: &str, spec: &str| {
            format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
            )
        };
        let warn = write(
            &dir,
            "warn.yaml",
            &cnp(
                "sa",
                "  endpointSelector: {matchLabels: {io.cilium.k8s.policy.service-account: web}}\n  egress:\n  - toEntities: [world]\n",
            ),
        );
        let (text, ok) = check(std::slice::from_ref(&warn), &ParseOptions::default());
        assert!(ok, "{text}");
        assert!(
            text.contains(
                "warn.yaml: CiliumNetworkPolicy shop/sa: \
                 spec.endpointSelector.matchLabels.io.cilium.k8s.policy.service-account: no \
                 endpoint carries"
            ),
            "{text}"
        );
        assert!(text.contains("\nwarning: /"), "{text}");
        assert!(text.contains("egress allow to [reserved:world]"), "{text}");
        assert!(text.ends_with("1 policies OK, 1 warning(s)\n"), "{text}");
        let strict = ParseOptions {
            strict: true,
            ..ParseOptions::default()
        };
        let (text, ok) = check(std::slice::from_ref(&warn), &strict);
        assert!(!ok);
        assert!(text.contains("refused by --strict-policy"), "{text}");
        assert!(text.ends_with("1 error(s)\n"), "{text}");

        // Every error of a file, in two policies, and the good one's warning.
        let bad = write(
            &dir,
            "bad.yaml",
            &format!(
                "{}---\n{}",
                cnp(
                    "a",
                    "  endpointSelector: {}\n  egress:\n  - toCIDR: [\"2001:db8::/32\"]\n  - toEntities: [wrld]\n"
                ),
                cnp(
                    "b",
                    "  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET}]}\n"
                )
            ),
        );
        let (text, ok) = check(&[bad.clone(), warn.clone()], &ParseOptions::default());
        assert!(!ok);
        for part in [
            "bad.yaml: CiliumNetworkPolicy shop/a: spec.egress[0].toCIDR[0]: 2001:db8::/32 is an IPv6 prefix",
            "bad.yaml: CiliumNetworkPolicy shop/a: spec.egress[1].toEntities[0]: \"wrld\" is not an entity",
            "bad.yaml: CiliumNetworkPolicy shop/b: spec.ingress[0].toPorts[0].rules.http: is not supported",
            "warn.yaml: CiliumNetworkPolicy shop/sa:",
        ] {
            assert!(text.contains(part), "{text:?} should hold {part:?}");
        }
        assert!(text.ends_with("3 error(s), 1 warning(s)\n"), "{text}");
        // --l7 ignore: policy b is read, with its warning.
        let ignore = ParseOptions {
            l7: L7Mode::Ignore,
            ..ParseOptions::default()
        };
        let (text, _) = check(std::slice::from_ref(&bad), &ignore);
        assert!(text.ends_with("2 error(s), 1 warning(s)\n"), "{text}");
        assert!(
            text.contains("shop/b: spec.ingress[0].toPorts[0].rules.http: is not enforced"),
            "{text}"
        );
    }

    #[test]
    fn flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(subcommand)]
            c: PolicyCommand,
        }
        let t = T::try_parse_from(["t", "check", "--strict-policy", "--l7", "ignore", "a.yaml"])
            .expect("parses");
        let PolicyCommand::Check {
            files,
            strict_policy,
            l7,
        } = t.c;
        assert_eq!(files, vec![PathBuf::from("a.yaml")]);
        assert!(strict_policy);
        assert_eq!(L7Mode::from(l7), L7Mode::Ignore);
        let t = T::try_parse_from(["t", "check", "a.yaml"]).expect("parses");
        let PolicyCommand::Check {
            strict_policy, l7, ..
        } = t.c;
        assert!(!strict_policy);
        assert_eq!(L7Mode::from(l7), L7Mode::Refuse);
        assert!(T::try_parse_from(["t", "check", "--l7", "enforce", "a.yaml"]).is_err());
    }
}
