//! The agent's configuration: flags, or a YAML file with the same names.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ipnet::Ipv4Net;
use meshgate_model::tls::ClientTls;
use meshgate_tunnel::BackendChoice;
use serde::Deserialize;

#[derive(Debug, Args, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    /// YAML file with the settings below (snake_case names); flags win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's name, unique in its cluster.
    #[arg(long)]
    pub node: Option<String>,
    /// The cluster's name.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The cluster's ID, 1..=255.
    #[arg(long)]
    pub cluster_id: Option<u8>,
    /// Discovery endpoint, e.g. http://198.18.1.2:7100; several replicas
    /// of the cluster's discovery comma-separated: the agent uses the first
    /// that answers and moves to the next when its connection breaks.
    #[arg(long)]
    pub discovery: Option<String>,
    /// This node's underlay address, where peers reach its WireGuard port.
    #[arg(long)]
    pub underlay_ip: Option<Ipv4Addr>,
    /// The pod CIDR of this node.
    #[arg(long)]
    pub pod_cidr: Option<Ipv4Net>,
    /// Directory for the key, the last known peers and status.json.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// WireGuard UDP port.
    #[arg(long)]
    pub listen_port: Option<u16>,
    /// auto (kernel if present, else userspace), kernel or userspace.
    #[arg(long)]
    pub backend: Option<String>,
    /// How traffic to other nodes is encrypted: wireguard (the default) or
    /// ipsec (ESP in tunnel mode with AES-GCM, keys from --ipsec-secret).
    /// A mesh mixes none: discovery refuses a node that differs.
    #[arg(long)]
    pub encryption: Option<String>,
    /// With --encryption ipsec: the mesh secret file, the same on every
    /// node (`<generation 1-15> <aes-gcm-128|aes-gcm-256> <base64 secret>`).
    /// Replacing it with the next generation rotates every pair's keys
    /// without loss, when it reaches all nodes within 3 s.
    #[arg(long)]
    pub ipsec_secret: Option<PathBuf>,
    /// Rotate the key every this many seconds (off by default).
    #[arg(long)]
    pub rotate_interval: Option<u64>,
    /// Name of the tunnel interface.
    #[arg(long)]
    pub interface: Option<String>,
    /// YAML list of this node's pods (`{name, namespace, ip, labels}`),
    /// reported to discovery after every registration.
    #[arg(long)]
    pub endpoints: Option<PathBuf>,
    /// The mesh CA (PEM) that signed discovery's certificate: talk to
    /// discovery over TLS (the --discovery URL is then https://).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM, CN <cluster>/<node>), signed by the mesh CA.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The name discovery's certificate must carry (default discovery.<cluster>.meshgate).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// This node's roles, comma-separated: cluster-gateway, egress-gateway.
    #[arg(long, value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// How pod traffic crosses to other nodes: plain (pod CIDRs routed into
    /// WireGuard, the default) or ebpf (VXLAN carrying the source identity,
    /// inside WireGuard, with the tc programs of meshgate-ebpf).
    #[arg(long)]
    pub datapath: Option<String>,
    /// Where the eBPF datapath pins its maps, programs and links (on bpffs;
    /// default /sys/fs/bpf/meshgate/<cluster>-<node>).
    #[arg(long)]
    pub bpf_pin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g.
    /// 127.0.0.1:9962; off unless given.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Strict encryption mode (needs --datapath ebpf): pod traffic to
    /// another node that would leave the node outside the encrypted mesh
    /// device is dropped and counted (`strict-unencrypted`), never sent.
    #[arg(long)]
    #[serde(default)]
    pub strict: bool,
    /// FQDN policy through the node's DNS proxy (needs --datapath ebpf):
    /// pods' DNS (UDP and TCP port 53) is let through to the host, where
    /// `meshgate dnsproxy` takes it, and the agent writes the proxy's
    /// policy file `<state-dir>/dnsproxy-policy.json`.
    #[arg(long)]
    #[serde(default)]
    pub dns_proxy: bool,
    /// Policy: a YAML file of NetworkPolicy / CiliumNetworkPolicy /
    /// CiliumEgressGatewayPolicy documents (repeatable; only with
    /// --datapath ebpf). SIGHUP re-reads the files and applies the
    /// difference.
    #[arg(long)]
    pub policy: Option<Vec<PathBuf>>,
    /// Refuse (at start, and at a SIGHUP reload) policies with a warning
    /// that means they do not do what they read as: a selector that can
    /// never match, an overridden namespace (see `meshgate policy check`).
    #[arg(long)]
    #[serde(default)]
    pub strict_policy: bool,
    /// HTTP / Kafka (L7) rules in the policy files: refuse the policy (the
    /// default), or ignore the L7 part, enforce the L3/L4 part and warn.
    #[arg(long, value_enum)]
    pub l7: Option<L7Arg>,
    /// Namespaces' labels, a YAML map `name: {key: value}` (the same file
    /// on every node of a cluster): each endpoint carries its namespace's
    /// as `io.cilium.k8s.namespace.labels.<key>`, which namespace selectors
    /// by label select. Re-read every second: changed labels are
    /// reported, and identities and policies follow.
    #[arg(long)]
    pub namespaces: Option<PathBuf>,
    /// The label source of pods added through `meshgate-cni`, a YAML map
    /// `namespace/name: {labels: {key: value}, serviceAccount: NAME}`,
    /// read at each ADD (until the Kubernetes API is wired in).
    #[arg(long)]
    pub pod_labels: Option<PathBuf>,
    /// A label of this node, `KEY=VALUE` (repeatable), published in its
    /// node record: egress gateway policies select gateway nodes by them.
    #[arg(long = "node-label", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub node_labels: Vec<String>,
    /// Where the agent's inventory comes from: `files` (the default: the
    /// --policy, --namespaces, --pod-labels and --node-label given) or
    /// `kubernetes`: its Node (pod CIDR, labels), the pods on it (labels of
    /// the pods `meshgate-cni` adds), the namespaces and every policy kind
    /// (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
    /// CiliumEgressGatewayPolicy), watched from the API (needs --datapath
    /// ebpf).
    #[arg(long)]
    pub inventory: Option<String>,
    /// Write the node's CNI network config (`05-meshgate.conflist`:
    /// meshgate-cni, host-local IPAM on the pod CIDR) into this directory
    /// once the agent serves its CNI socket (e.g. /etc/cni/net.d).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// With --inventory kubernetes: the kubeconfig to reach the API with
    /// (default: KUBECONFIG, ~/.kube/config, then the pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// An address of the Kubernetes API server (repeatable; with
    /// --policy): the datapath gives it identity kube-apiserver (7), which
    /// `toEntities: [kube-apiserver]` selects.
    #[arg(long = "kube-apiserver", value_name = "IP")]
    #[serde(default)]
    pub kube_apiserver: Vec<Ipv4Addr>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub cluster: String,
    pub cluster_id: u8,
    /// The discovery replicas' URLs, in the order they are tried (at least one).
    pub discovery: Vec<String>,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub state_dir: PathBuf,
    pub listen_port: u16,
    pub backend: BackendChoice,
    pub encryption: meshgate_model::model::Encryption,
    /// The mesh secret file (with `Encryption::Ipsec` only).
    pub ipsec_secret: Option<PathBuf>,
    pub rotate_interval: Option<Duration>,
    pub interface: String,
    pub endpoints: Option<PathBuf>,
    /// Mutual TLS to discovery, when configured.
    pub tls: Option<ClientTls>,
    /// Roles published in the node record (`cluster-gateway`, `egress-gateway`).
    pub roles: Vec<String>,
    pub datapath: super::datapath::Mode,
    pub bpf_pin_dir: PathBuf,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Strict encryption mode (eBPF datapath only).
    pub strict: bool,
    /// DNS proxy steering and its policy file (eBPF datapath only).
    pub dns_proxy: bool,
    /// `--policy` files (empty: no policy is applied).
    pub policy_files: Vec<PathBuf>,
    /// `--namespaces` file.
    pub namespaces: Option<PathBuf>,
    /// `--pod-labels` file.
    pub pod_labels: Option<PathBuf>,
    /// How they are read (`--strict-policy`, `--l7`).
    pub policy_options: meshgate_model::policy::ParseOptions,
    /// `--node-label`s.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `--kube-apiserver` addresses.
    pub kube_apiservers: Vec<Ipv4Addr>,
    /// Where the inventory comes from.
    pub inventory: Inventory,
    /// `--cni-conf-dir`.
    pub cni_conf_dir: Option<PathBuf>,
    /// `--pod-cidr` was not given: the Node's `spec.podCIDRs` gives it
    /// (with `Inventory::Kubernetes` only; `pod_cidr` is set at start).
    pub pod_cidr_from_node: bool,
}

/// Where the agent's node, pods, namespaces and policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inventory {
    Files,
    Kubernetes { kubeconfig: Option<PathBuf> },
}

impl Inventory {
    pub fn is_kubernetes(&self) -> bool {
        matches!(self, Inventory::Kubernetes { .. })
    }
}

impl AgentConfig {
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("private.key")
    }

    /// Whether this node carries its cluster's traffic to other clusters.
    pub fn is_cluster_gateway(&self) -> bool {
        self.roles.iter().any(|r| r == "cluster-gateway")
    }

    /// The mesh-wide name of this node.
    pub fn mesh_name(&self) -> String {
        format!("{}/{}", self.cluster, self.node)
    }
}

fn load_file(path: &Path) -> anyhow::Result<AgentArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent config {}", path.display()))?;
    serde_yaml::from_str(&text)
        .with_context(|| format!("agent config {} is not valid", path.display()))
}

impl AgentArgs {
    /// Merges the file (if any) under the flags and checks every value.
    pub fn resolve(self) -> anyhow::Result<AgentConfig> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => AgentArgs::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                self.$field.or(file.$field)
            };
        }
        macro_rules! need {
            ($field:ident, $flag:literal) => {
                match pick!($field) {
                    Some(v) => v,
                    None => bail!(concat!(
                        "the agent needs ",
                        $flag,
                        " (flag, or the same name in snake_case in --config)"
                    )),
                }
            };
        }
        let node = need!(node, "--node");
        let cluster = need!(cluster, "--cluster");
        let cluster_id = need!(cluster_id, "--cluster-id");
        if cluster_id == 0 {
            bail!("--cluster-id 0 is not valid: use 1..=255");
        }
        let discovery = discovery_urls(&need!(discovery, "--discovery"))?;
        let tls = client_tls(
            &discovery[0],
            &cluster,
            pick!(tls_ca),
            pick!(tls_cert),
            pick!(tls_key),
            pick!(tls_server_name),
        )?;
        let backend_given = pick!(backend);
        let given_backend = backend_given.is_some();
        let backend: BackendChoice = backend_given
            .unwrap_or_else(|| "auto".into())
            .parse()
            .map_err(anyhow::Error::msg)?;
        let encryption: meshgate_model::model::Encryption = pick!(encryption)
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--encryption: {e}"))?;
        let ipsec_secret = pick!(ipsec_secret);
        match (encryption, &ipsec_secret) {
            (meshgate_model::model::Encryption::Ipsec, None) => bail!(
                "--encryption ipsec needs --ipsec-secret FILE, the mesh secret every node holds \
                 (make one with `echo \"1 aes-gcm-128 $(head -c 32 /dev/urandom | base64)\" > FILE`)"
            ),
            (meshgate_model::model::Encryption::Wireguard, Some(_)) => bail!(
                "--ipsec-secret is only for --encryption ipsec (add --encryption ipsec, or leave \
                 the secret out)"
            ),
            (meshgate_model::model::Encryption::Ipsec, Some(_)) if given_backend => bail!(
                "--backend chooses the WireGuard implementation; with --encryption ipsec leave \
                 it out"
            ),
            _ => {}
        }
        let rotate_interval = match pick!(rotate_interval) {
            Some(0) => bail!("--rotate-interval 0 is not valid: give seconds, or leave it out"),
            other => other.map(Duration::from_secs),
        };
        let roles = pick!(roles).unwrap_or_default();
        if let Some(bad) = roles
            .iter()
            .find(|r| !matches!(r.as_str(), "cluster-gateway" | "egress-gateway"))
        {
            bail!("--roles: {bad:?} is not a role: use cluster-gateway and/or egress-gateway, comma-separated");
        }
        let datapath: super::datapath::Mode = pick!(datapath)
            .unwrap_or_else(|| "plain".into())
            .parse()
            .map_err(anyhow::Error::msg)?;
        let strict = self.strict || file.strict;
        if strict && datapath != super::datapath::Mode::Ebpf {
            bail!(
                "--strict needs --datapath ebpf: strict encryption mode is enforced by the \
                 eBPF programs (add --datapath ebpf, or leave --strict out)"
            );
        }
        let dns_proxy = self.dns_proxy || file.dns_proxy;
        if dns_proxy && datapath != super::datapath::Mode::Ebpf {
            bail!(
                "--dns-proxy needs --datapath ebpf: the eBPF programs steer pods' DNS to the \
                 proxy and enforce what it learns (add --datapath ebpf, or leave out --dns-proxy)"
            );
        }
        let policy_files = pick!(policy).unwrap_or_default();
        let inventory = match pick!(inventory).as_deref() {
            None | Some("files") => {
                if pick!(kubeconfig).is_some() {
                    bail!("--kubeconfig is for --inventory kubernetes (add it, or leave --kubeconfig out)");
                }
                Inventory::Files
            }
            Some("kubernetes") => Inventory::Kubernetes {
                kubeconfig: pick!(kubeconfig),
            },
            Some(other) => bail!("--inventory {other:?}: use files or kubernetes"),
        };
        if inventory.is_kubernetes() {
            let given = [
                ("--policy", !policy_files.is_empty()),
                (
                    "--namespaces",
                    self.namespaces.is_some() || file.namespaces.is_some(),
                ),
                (
                    "--pod-labels",
                    self.pod_labels.is_some() || file.pod_labels.is_some(),
                ),
                (
                    "--node-label",
                    !self.node_labels.is_empty() || !file.node_labels.is_empty(),
                ),
                (
                    "--endpoints",
                    self.endpoints.is_some() || file.endpoints.is_some(),
                ),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
                bail!(
                    "{flag} is read from the Kubernetes API with --inventory kubernetes (policies, \
                     namespaces, pod and node labels; pods come through meshgate-cni): leave \
                     {flag} out, or use --inventory files"
                );
            }
            if datapath != super::datapath::Mode::Ebpf {
                bail!(
                    "--inventory kubernetes needs --datapath ebpf: the policies it reads are \
                     enforced by the eBPF programs (add --datapath ebpf)"
                );
            }
        }
        let has_policy = !policy_files.is_empty() || inventory.is_kubernetes();
        if !policy_files.is_empty() && datapath != super::datapath::Mode::Ebpf {
            bail!(
                "--policy needs --datapath ebpf: only the eBPF datapath enforces identity \
                 policy (add --datapath ebpf, or leave out --policy)"
            );
        }
        let strict_policy = self.strict_policy || file.strict_policy;
        let l7 = pick!(l7);
        if !has_policy && (strict_policy || l7.is_some()) {
            bail!(
                "--strict-policy and --l7 say how the --policy files are read: they need \
                 --policy (add the policy files, or leave them out)"
            );
        }
        let policy_options = meshgate_model::policy::ParseOptions {
            strict: strict_policy,
            l7: l7.unwrap_or_default().into(),
        };
        let given_labels = if self.node_labels.is_empty() {
            file.node_labels
        } else {
            self.node_labels
        };
        let labels = node_labels(&given_labels)?;
        let bpf_pin_dir =
            pick!(bpf_pin_dir).unwrap_or_else(|| super::datapath::default_pin_dir(&cluster, &node));
        let kube_apiservers = if self.kube_apiserver.is_empty() {
            file.kube_apiserver
        } else {
            self.kube_apiserver
        };
        if !kube_apiservers.is_empty() && !has_policy {
            bail!(
                "--kube-apiserver gives the API server its identity for policy: it needs \
                 --policy (add the policy files, or leave out --kube-apiserver)"
            );
        }
        let pod_cidr = pick!(pod_cidr);
        let pod_cidr_from_node = pod_cidr.is_none() && inventory.is_kubernetes();
        let pod_cidr = match pod_cidr {
            Some(c) => c,
            // Set from the Node at start.
            None if pod_cidr_from_node => Ipv4Net::default(),
            None => bail!(
                "the agent needs --pod-cidr (flag, or the same name in snake_case in --config), \
                 or --inventory kubernetes to take it from the Node"
            ),
        };
        Ok(AgentConfig {
            cni_conf_dir: pick!(cni_conf_dir),
            inventory,
            pod_cidr_from_node,
            kube_apiservers,
            labels,
            metrics_addr: pick!(metrics_addr),
            strict,
            dns_proxy,
            policy_files,
            policy_options,
            namespaces: pick!(namespaces),
            pod_labels: pick!(pod_labels),
            datapath,
            bpf_pin_dir,
            roles,
            node,
            cluster,
            cluster_id,
            discovery,
            underlay_ip: need!(underlay_ip, "--underlay-ip"),
            pod_cidr,
            state_dir: pick!(state_dir).unwrap_or_else(|| PathBuf::from("/var/lib/meshgate")),
            listen_port: pick!(listen_port).unwrap_or(51820),
            backend,
            rotate_interval,
            interface: pick!(interface).unwrap_or_else(|| match encryption {
                meshgate_model::model::Encryption::Wireguard => "mg-wg0".into(),
                meshgate_model::model::Encryption::Ipsec => "mg-ipsec0".into(),
            }),
            encryption,
            ipsec_secret,
            endpoints: pick!(endpoints),
            tls,
        })
    }
}

/// `--node-label KEY=VALUE`s as a map; a malformed or repeated key is an error.
pub fn node_labels(given: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for l in given {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--node-label {l:?} is not KEY=VALUE (e.g. --node-label egress=true)");
        };
        let (k, v) = (k.trim(), v.trim());
        let bad = |s: &str| s.chars().any(|c| c.is_whitespace() || c == ',' || c == '=');
        if k.is_empty() || bad(k) || bad(v) {
            bail!(
                "--node-label {l:?}: a label key is not empty, and neither key nor value holds \
                 spaces, commas or '='"
            );
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            bail!("--node-label gives the key {k:?} twice; give each label once");
        }
    }
    Ok(out)
}

/// `--discovery`: one URL or several comma-separated, all http:// or all
/// https://, none twice.
pub fn discovery_urls(given: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = given.split(',').map(|u| u.trim().to_string()).collect();
    for url in &urls {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            bail!(
                "--discovery {url:?} must be a URL like http://198.18.1.2:7100 \
                 (several replicas: comma-separated URLs)"
            );
        }
    }
    let https = urls[0].starts_with("https://");
    if urls.iter().any(|u| u.starts_with("https://") != https) {
        bail!("--discovery {given:?} mixes http:// and https:// URLs: the replicas of one discovery are all TLS or all not");
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = urls.iter().find(|u| !seen.insert(u.as_str())) {
        bail!("--discovery {given:?} names {twice} twice");
    }
    Ok(urls)
}

/// The TLS settings for talking to discovery at `url`, loaded and checked;
/// shared with `meshgate nodes`.
pub fn client_tls(
    url: &str,
    cluster: &str,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> anyhow::Result<Option<ClientTls>> {
    let https = url.starts_with("https://");
    let Some(ca) = ca else {
        if https {
            bail!("--discovery {url} is https:// but no --tls-ca was given: pass the mesh CA (and --tls-cert/--tls-key)");
        }
        if cert.is_some() || key.is_some() || server_name.is_some() {
            bail!("--tls-cert, --tls-key and --tls-server-name need --tls-ca (the mesh CA)");
        }
        return Ok(None);
    };
    if !https {
        bail!("--tls-ca is given but --discovery {url} is not https://: use https://IP:PORT");
    }
    ClientTls::from_files(&ca, cert.as_deref(), key.as_deref(), server_name, cluster)
        .map(Some)
        .context("loading the TLS files for discovery")
}

/// `--l7`: what to do with HTTP / Kafka rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L7Arg {
    /// Refuse the policy (default).
    #[default]
    Refuse,
    /// Enforce the rule's L3/L4 part and warn that the L7 part is not.
    Ignore,
}

impl From<L7Arg> for meshgate_model::policy::L7Mode {
    fn from(a: L7Arg) -> meshgate_model::policy::L7Mode {
        match a {
            L7Arg::Refuse => meshgate_model::policy::L7Mode::Refuse,
            L7Arg::Ignore => meshgate_model::policy::L7Mode::Ignore,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn full() -> AgentArgs {
        AgentArgs {
            node: Some("n1".into()),
            cluster: Some("c1".into()),
            cluster_id: Some(1),
            discovery: Some("http://198.18.1.2:7100".into()),
            underlay_ip: Some("198.18.1.10".parse().unwrap()),
            pod_cidr: Some("10.1.0.0/24".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_the_rest() {
        let cfg = full().resolve().unwrap();
        assert_eq!(cfg.listen_port, 51820);
        assert_eq!(cfg.interface, "mg-wg0");
        assert_eq!(cfg.backend, BackendChoice::Auto);
        assert_eq!(cfg.mesh_name(), "c1/n1");
        assert_eq!(cfg.datapath, super::super::datapath::Mode::Plain);
        assert_eq!(
            cfg.bpf_pin_dir,
            std::path::Path::new("/sys/fs/bpf/meshgate/c1-n1")
        );
    }

    #[test]
    fn kubernetes_inventory_takes_the_pod_cidr_from_the_node_and_refuses_the_files_it_replaces() {
        let mut a = full();
        a.inventory = Some("kubernetes".into());
        a.pod_cidr = None;
        let err = format!("{:#}", a.resolve().unwrap_err());
        assert!(
            err.contains("--inventory kubernetes needs --datapath ebpf"),
            "{err}"
        );
        let mut a = full();
        a.inventory = Some("kubernetes".into());
        a.datapath = Some("ebpf".into());
        a.pod_cidr = None;
        a.kubeconfig = Some("/etc/kube.conf".into());
        a.strict_policy = true;
        let cfg = a.resolve().unwrap();
        assert!(cfg.pod_cidr_from_node);
        assert!(
            cfg.policy_options.strict,
            "--strict-policy reads the API's policies"
        );
        assert_eq!(
            cfg.inventory,
            Inventory::Kubernetes {
                kubeconfig: Some("/etc/kube.conf".into())
            }
        );
        for (flag, set) in [
            (
                "--policy",
                (|a: &mut AgentArgs| a.policy = Some(vec!["p.yaml".into()])) as fn(&mut AgentArgs),
            ),
            ("--namespaces", |a| a.namespaces = Some("ns.yaml".into())),
            ("--pod-labels", |a| a.pod_labels = Some("l.yaml".into())),
            ("--node-label", |a| a.node_labels = vec!["a=b".into()]),
            ("--endpoints", |a| a.endpoints = Some("e.yaml".into())),
        ] {
            let mut a = full();
            a.inventory = Some("kubernetes".into());
            a.datapath = Some("ebpf".into());
            set(&mut a);
            let err = format!("{:#}", a.resolve().unwrap_err());
            assert!(
                err.starts_with(&format!("{flag} is read from the Kubernetes API")),
                "{err}"
            );
        }
        let mut a = full();
        a.inventory = Some("k8s".into());
        assert!(format!("{:#}", a.resolve().unwrap_err()).contains("use files or kubernetes"));
        let mut a = full();
        a.kubeconfig = Some("k".into());
        assert!(format!("{:#}", a.resolve().unwrap_err()).contains("--kubeconfig is for"));
        // Files stay the default, and need --pod-cidr.
        let mut a = full();
        a.pod_cidr = None;
        assert!(format!("{:#}", a.resolve().unwrap_err()).contains("--pod-cidr"));
        assert_eq!(full().resolve().unwrap().inventory, Inventory::Files);
    }

    #[test]
    fn bad_datapath_is_explained() {
        let mut a = full();
        a.datapath = Some("xdp".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("plain or ebpf"), "{err}");
        let mut a = full();
        a.policy = Some(vec!["p.yaml".into()]);
        assert!(
            format!("{:#}", a.resolve().unwrap_err()).contains("--policy needs --datapath ebpf")
        );
        let mut a = full();
        a.datapath = Some("ebpf".into());
        assert_eq!(
            a.resolve().unwrap().datapath,
            super::super::datapath::Mode::Ebpf
        );
    }

    #[test]
    fn strict_policy_and_l7_say_how_the_policy_files_are_read() {
        use meshgate_model::policy::{L7Mode, ParseOptions};
        let cfg = full().resolve().unwrap();
        assert_eq!(cfg.policy_options, ParseOptions::default());
        let mut a = full();
        a.strict_policy = true;
        let err = format!("{:#}", a.resolve().unwrap_err());
        assert!(
            err.contains("--strict-policy and --l7 say how the --policy files are read"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            "datapath: ebpf\npolicy: [p.yaml]\nstrict_policy: true\nl7: ignore\n",
        )
        .unwrap();
        let mut a = full();
        a.config = Some(path);
        let cfg = a.resolve().unwrap();
        assert_eq!(
            cfg.policy_options,
            ParseOptions {
                strict: true,
                l7: L7Mode::Ignore
            }
        );
    }

    #[test]
    fn ipsec_needs_its_secret_and_no_wireguard_backend() {
        let mut a = full();
        a.encryption = Some("ipsec".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(
            err.contains("needs --ipsec-secret FILE") && err.contains("head -c 32"),
            "{err}"
        );
        let mut a = full();
        a.ipsec_secret = Some("s".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("only for --encryption ipsec"), "{err}");
        let mut a = full();
        a.encryption = Some("ipsec".into());
        a.ipsec_secret = Some("s".into());
        a.backend = Some("kernel".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("leave it out"), "{err}");
        let mut a = full();
        a.encryption = Some("tls".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("use wireguard or ipsec"), "{err}");
        let mut a = full();
        a.encryption = Some("ipsec".into());
        a.ipsec_secret = Some("s".into());
        let cfg = a.resolve().unwrap();
        assert_eq!(cfg.interface, "mg-ipsec0");
        assert_eq!(cfg.encryption, meshgate_model::model::Encryption::Ipsec);
    }

    #[test]
    fn strict_needs_the_ebpf_datapath() {
        let mut a = full();
        a.strict = true;
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("--strict needs --datapath ebpf"), "{err}");
        let mut a = full();
        a.strict = true;
        a.datapath = Some("ebpf".into());
        assert!(a.resolve().unwrap().strict);
        assert!(!full().resolve().unwrap().strict);
    }

    #[test]
    fn node_labels_are_key_value_pairs() {
        let mut a = full();
        a.node_labels = vec!["egress=true".into(), "zone = a".into()];
        let cfg = a.resolve().unwrap();
        assert_eq!(cfg.labels["egress"], "true");
        assert_eq!(cfg.labels["zone"], "a");
        for bad in ["egress", "=x", "a b=c", "k=v,w"] {
            let mut a = full();
            a.node_labels = vec![bad.into()];
            let err = a.resolve().unwrap_err().to_string();
            assert!(err.contains("--node-label"), "{bad}: {err}");
        }
        let mut a = full();
        a.node_labels = vec!["k=1".into(), "k=2".into()];
        assert!(a.resolve().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn missing_field_is_named() {
        let mut a = full();
        a.pod_cidr = None;
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("--pod-cidr"), "{err}");
    }

    #[test]
    fn bad_backend_is_explained() {
        let mut a = full();
        a.backend = Some("ipsec".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("auto, kernel or userspace"), "{err}");
    }

    #[test]
    fn file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "node: n9\ncluster: c1\ncluster_id: 1\ndiscovery: http://198.18.1.2:7100\nunderlay_ip: 198.18.1.10\npod_cidr: 10.1.0.0/24\nlisten_port: 51999\n").unwrap();
        let args = AgentArgs {
            config: Some(path),
            node: Some("n1".into()),
            ..Default::default()
        };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.node, "n1");
        assert_eq!(cfg.listen_port, 51999);
    }

    #[test]
    fn tls_needs_https_and_the_ca() {
        let mut a = full();
        a.discovery = Some("https://198.18.1.2:7100".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("--tls-ca"), "{err}");
        let mut a = full();
        a.tls_ca = Some("/nonexistent/ca.pem".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("not https://"), "{err}");
        let mut a = full();
        a.discovery = Some("https://198.18.1.2:7100".into());
        a.tls_ca = Some("/nonexistent/ca.pem".into());
        let err = format!("{:#}", a.resolve().unwrap_err());
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(full().resolve().unwrap().tls.is_none());
    }

    #[test]
    fn several_discovery_urls_are_kept_in_order() {
        let mut a = full();
        a.discovery = Some("http://198.18.1.2:7100, http://198.18.1.3:7100".into());
        let cfg = a.resolve().unwrap();
        assert_eq!(
            cfg.discovery,
            ["http://198.18.1.2:7100", "http://198.18.1.3:7100"]
        );
        for bad in [
            "http://198.18.1.2:7100,198.18.1.3:7100",
            "http://198.18.1.2:7100,https://198.18.1.3:7100",
            "http://198.18.1.2:7100,http://198.18.1.2:7100",
            "http://198.18.1.2:7100,",
        ] {
            let mut a = full();
            a.discovery = Some(bad.into());
            let err = a.resolve().unwrap_err().to_string();
            assert!(err.contains("--discovery"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_file_field_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "nodename: n1\n").unwrap();
        let args = AgentArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("nodename"), "{err}");
    }
}
