//! A real container runtime on a lab node (`runtime: containerd`): the
//! distribution's containerd with its own root, state, socket and config
//! under the node's state dir; an image
//! built here (no registry is reachable) from Debian's `busybox-static` as
//! an OCI layout and imported; and `meshgate-cni` as the node's CNI config.
//!
//! Containers are made with `ctr run --cni`, which runs the CNI plugins of
//! `/etc/cni/net.d` from `/opt/cni/bin` itself, like a kubelet's runtime:
//! so `ctr` runs in the node's namespace, in a mount namespace of its own
//! where those two directories are the node's. `ctr` 1.6 does not run the
//! CNI DEL of a detached container when it is deleted, so [`rm`] runs it,
//! as the runtime would.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::error::LabError;
use crate::plan::{world_dir, ClusterPlan, NodePlan};
use crate::world::record::{Component, ProcessRecord, WorldRecord};

type Result<T> = std::result::Result<T, LabError>;

pub const CONTAINERD_BIN: &str = "/usr/bin/containerd";
pub const CTR_BIN: &str = "/usr/bin/ctr";
/// Debian's statically linked busybox (package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// The reference CNI plugins (containernetworking-plugins).
pub const CNI_PLUGINS: &str = "/usr/lib/cni";
/// The image every lab container runs.
pub const IMAGE: &str = "meshgate.local/busybox:1";
/// The busybox applets the image has.
const APPLETS: [&str; 14] = [
    "sh", "ping", "sleep", "nc", "ip", "cat", "echo", "httpd", "wget", "ifconfig", "ls",
    "hostname", "true", "kill",
];
/// How long containerd may take to answer after its start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Pod addresses of containers start here in the node's /24 (the
/// scenario's pods take .10 onwards).
const FIRST_HOST: u8 = 100;

fn io(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

fn dir(n: &NodePlan) -> PathBuf {
    n.state_dir.join("containerd")
}

/// The node's containerd socket.
pub fn socket(n: &NodePlan) -> PathBuf {
    dir(n).join("containerd.sock")
}

fn cni_dir(n: &NodePlan) -> PathBuf {
    n.state_dir.join("cni")
}

/// The CNI container ID `ctr` gives container `name` (its namespace and
/// the name), which is also the pod's name.
pub fn container_id(name: &str) -> String {
    format!("default-{name}")
}

/// `prog` in a directory of the PATH, if it is there.
fn in_path(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Checks what a runtime node needs on this host.
pub fn check_host(meshgate_bin: &Path) -> Result<()> {
    let cni = meshgate_bin.with_file_name("meshgate-cni");
    for (path, fix) in [
        (
            PathBuf::from(CONTAINERD_BIN),
            "apt-get install containerd (or `cargo xtask deps`)",
        ),
        (
            PathBuf::from(CTR_BIN),
            "apt-get install containerd (or `cargo xtask deps`)",
        ),
        (
            // containerd's shim finds runc on the PATH.
            in_path("runc").unwrap_or_else(|| PathBuf::from("runc")),
            "apt-get install runc (or `cargo xtask deps`)",
        ),
        (
            PathBuf::from(BUSYBOX),
            "apt-get install busybox-static (or `cargo xtask deps`)",
        ),
        (
            Path::new(CNI_PLUGINS).join("host-local"),
            "apt-get install containernetworking-plugins (or `cargo xtask deps`)",
        ),
        (
            cni.clone(),
            "build it beside meshgate: cargo build -p meshgate-gateway",
        ),
    ] {
        if !path.exists() {
            return Err(LabError::HostMissing {
                missing: format!("{} (a node has `runtime: containerd`)", path.display()),
                fix: fix.to_string(),
            });
        }
    }
    Ok(())
}

/// The OCI image tarball (built once per world).
fn image(world: &str) -> Result<PathBuf> {
    let path = world_dir(world).join("busybox-oci.tar");
    if path.exists() {
        return Ok(path);
    }
    let busybox = std::fs::read(BUSYBOX).map_err(io(format!("reading {BUSYBOX}")))?;
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    let add_err = |e: std::io::Error| LabError::Io {
        what: "building the image layer".into(),
        source: e,
    };
    layer
        .append_data(&mut dir.clone(), "bin/", std::io::empty())
        .map_err(add_err)?;
    let mut file = tar::Header::new_ustar();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    layer
        .append_data(&mut file, "bin/busybox", busybox.as_slice())
        .map_err(add_err)?;
    for applet in APPLETS {
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        layer
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .map_err(add_err)?;
    }
    for d in ["etc/", "tmp/", "proc/", "sys/", "dev/"] {
        layer
            .append_data(&mut dir.clone(), d, std::io::empty())
            .map_err(add_err)?;
    }
    let layer = layer.into_inner().map_err(add_err)?;
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut blob = |bytes: Vec<u8>| -> (String, usize) {
        let digest = format!("{:x}", Sha256::digest(&bytes));
        let len = bytes.len();
        blobs.push((digest.clone(), bytes));
        (digest, len)
    };
    let (layer_digest, layer_len) = blob(layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let (config_digest, config_len) = blob(config.to_string().into_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer_len}],
    });
    let (manifest_digest, manifest_len) = blob(manifest.to_string().into_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_len,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE},
        }],
    });
    let mut out = tar::Builder::new(Vec::new());
    let mut put = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        out.append_data(&mut h, name, bytes)
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(add_err)?;
    put("index.json", index.to_string().as_bytes()).map_err(add_err)?;
    for (digest, bytes) in &blobs {
        put(&format!("blobs/sha256/{digest}"), bytes).map_err(add_err)?;
    }
    let bytes = out.into_inner().map_err(add_err)?;
    std::fs::write(&path, bytes).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

fn config(n: &NodePlan) -> String {
    let d = dir(n);
    let s = socket(n);
    format!(
        "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
         \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
         \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.internal.v1.opt\"]\n\
         [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
         [debug]\n  address = \"{debug}\"\n[metrics]\n  address = \"\"\n",
        root = d.join("root").display(),
        state = d.join("state").display(),
        sock = s.display(),
        debug = d.join("debug.sock").display(),
    )
}

/// The node's CNI config: `meshgate-cni` with host-local IPAM on the
/// node's pod CIDR from .100, and the agent's socket.
fn cni_conf(n: &NodePlan, mtu: u32) -> serde_json::Value {
    let o = n.pod_cidr.network().octets();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "meshgate",
        "type": "meshgate-cni",
        "mtu": mtu,
        "agentSocket": n.state_dir.join("cni.sock"),
        "ipam": {
            "type": "host-local",
            "ranges": [[{
                "subnet": n.pod_cidr.to_string(),
                "rangeStart": format!("{}.{}.{}.{FIRST_HOST}", o[0], o[1], o[2]),
            }]],
            "dataDir": cni_dir(n).join("ipam"),
        },
    })
}

/// Runs `ctr` against the node's containerd (`cni`: in the node's
/// namespace with its CNI directories).
fn ctr(n: &NodePlan, args: &[&str], cni: bool) -> Result<Output> {
    let sock = socket(n).display().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &n.netns]);
    if cni {
        let c = cni_dir(n);
        let script = format!(
            "mkdir -p /etc/cni/net.d /opt/cni/bin && mount --bind {conf} /etc/cni/net.d && \
             mount --bind {bin} /opt/cni/bin && exec {CTR_BIN} -a {sock} \"$@\"",
            conf = c.join("net.d").display(),
            bin = c.join("bin").display(),
        );
        cmd.args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "ctr",
        ]);
    } else {
        cmd.args([CTR_BIN, "-a", &sock]);
    }
    cmd.args(args);
    cmd.output()
        .map_err(io(format!("running ctr {}", args.join(" "))))
}

fn ctr_ok(n: &NodePlan, args: &[&str], cni: bool) -> Result<String> {
    let out = ctr(n, args, cni)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("ctr {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Starts the node's containerd, imports the image and writes the CNI
/// config, if the node has `runtime: containerd`.
pub(crate) fn start(
    rec: &mut WorldRecord,
    c: &ClusterPlan,
    n: &NodePlan,
    meshgate_bin: &Path,
    mtu: u32,
) -> Result<()> {
    if n.runtime.is_none() {
        return Ok(());
    }
    check_host(meshgate_bin)?;
    let d = dir(n);
    std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
    let conf = d.join("config.toml");
    std::fs::write(&conf, config(n)).map_err(io(format!("writing {}", conf.display())))?;
    let bin_dir = cni_dir(n).join("bin");
    let net_d = cni_dir(n).join("net.d");
    for p in [&bin_dir, &net_d] {
        std::fs::create_dir_all(p).map_err(io(format!("creating {}", p.display())))?;
    }
    let links = [
        ("meshgate-cni", meshgate_bin.with_file_name("meshgate-cni")),
        ("host-local", Path::new(CNI_PLUGINS).join("host-local")),
        ("loopback", Path::new(CNI_PLUGINS).join("loopback")),
    ];
    for (name, target) in links {
        let link = bin_dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(io(format!(
            "linking {} to {}",
            link.display(),
            target.display()
        )))?;
    }
    let conf_file = net_d.join("10-meshgate.conf");
    std::fs::write(&conf_file, cni_conf(n, mtu).to_string())
        .map_err(io(format!("writing {}", conf_file.display())))?;
    let p = ProcessRecord {
        component: Component::Containerd {
            cluster: c.name.clone(),
            node: n.name.clone(),
        },
        // In the host's namespaces: runc needs the host's cgroup mounts.
        netns: String::new(),
        args: vec!["--config".into(), conf.display().to_string()],
        log: d.join("containerd.log"),
        pid: None,
    };
    crate::world::spawn_recorded(rec, p, Path::new(CONTAINERD_BIN))?;
    let deadline = Instant::now() + START_TIMEOUT;
    while ctr(n, &["version"], false)
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!(
                    "containerd of {}/{} answering on {}",
                    c.name,
                    n.name,
                    socket(n).display()
                ),
                timeout: START_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tar = image(&rec.plan.world)?;
    ctr_ok(
        n,
        &[
            "images",
            "import",
            "--base-name",
            "meshgate.local/busybox",
            &tar.display().to_string(),
        ],
        false,
    )?;
    Ok(())
}

/// The node plan of `cluster/node`, which must have a runtime.
fn runtime_node(rec: &WorldRecord, target: &str) -> Result<NodePlan> {
    let bad = |problem: &str| LabError::Target {
        target: target.to_string(),
        problem: problem.to_string(),
    };
    let (cluster, node) = target
        .split_once('/')
        .ok_or_else(|| bad("name a node as CLUSTER/NODE"))?;
    let n = rec
        .plan
        .cluster(cluster)
        .and_then(|c| c.node(node))
        .ok_or_else(|| bad("no such node in this world"))?;
    if n.runtime.is_none() {
        return Err(bad(
            "this node has no container runtime: give it `runtime: containerd` in the scenario",
        ));
    }
    Ok(n.clone())
}

fn set_labels(n: &NodePlan, name: &str, labels: Option<&BTreeMap<String, String>>) -> Result<()> {
    let path = n.pod_labels_file();
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut all: BTreeMap<String, serde_yaml::Value> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_yaml::from_str(&text).map_err(|e| LabError::BadFile {
            path: path.clone(),
            problem: e.to_string(),
        })?
    };
    let key = format!("default/{}", container_id(name));
    match labels {
        Some(l) => {
            let mut entry = serde_yaml::Mapping::new();
            entry.insert(
                "labels".into(),
                serde_yaml::to_value(l).map_err(|e| LabError::BadFile {
                    path: path.clone(),
                    problem: e.to_string(),
                })?,
            );
            all.insert(key, serde_yaml::Value::Mapping(entry));
        }
        None => {
            all.remove(&key);
        }
    }
    let text = serde_yaml::to_string(&all).map_err(|e| LabError::BadFile {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    // Replaced whole: the agent watches the file and must never read it
    // half-written (an empty file would take every pod's labels).
    crate::world::write_replacing(&path, &text)
}

/// The address the agent holds for container `name` of node `n`.
pub fn container_ip(n: &NodePlan, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(n.state_dir.join("pods.json")).ok()?;
    let pods: serde_json::Value = serde_json::from_str(&text).ok()?;
    let key = format!("{}/eth0", container_id(name));
    pods[key]["pod"]["ip"].as_str().map(str::to_string)
}

/// `lab run CLUSTER/NODE --name NAME [--label k=v] -- CMD`: a container
/// through `ctr run --cni` (so `meshgate-cni`), with `labels` for its
/// endpoint; its address.
pub fn run(
    world: Option<&str>,
    target: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    command: &[String],
) -> Result<String> {
    let world = crate::world::pick_world(world)?;
    let rec = WorldRecord::load_up(&world)?;
    let n = runtime_node(&rec, target)?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(LabError::Target {
            target: name.to_string(),
            problem: "a container name is letters, digits and '-'".into(),
        });
    }
    set_labels(&n, name, Some(labels))?;
    // runc's state of its own: two nodes' containerds must not share
    // runc's default root (/run/containerd/runc), where container IDs
    // would clash.
    let runc_root = dir(&n).join("runc").display().to_string();
    let mut args = vec!["run", "-d", "--cni", "--runc-root", &runc_root, IMAGE, name];
    args.extend(command.iter().map(String::as_str));
    if let Err(e) = ctr_ok(&n, &args, true) {
        // ctr made the container (and maybe its task), and maybe its
        // network, before a later step failed: take them out, CNI DEL
        // included (a no-op for what the plugin undid itself).
        let _ = remove(&n, name);
        let _ = set_labels(&n, name, None);
        return Err(e);
    }
    let ip = container_ip(&n, name).unwrap_or_else(|| "?".into());
    Ok(format!("container {name} on {target}: {ip}"))
}

/// `lab exec [WORLD:]CLUSTER/NODE --container NAME -- CMD`: runs `command`
/// in the container with the terminal's output; its exit code.
pub fn exec_target(target: &str, name: &str, command: &[String]) -> Result<i32> {
    let t = crate::target::resolve(target)?;
    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    let out = exec(&t.world, &format!("{}/{}", t.cluster, t.name), name, &argv)?;
    let _ = std::io::stdout().write_all(&out.stdout);
    let _ = std::io::stderr().write_all(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    Ok(out
        .status
        .code()
        .or_else(|| out.status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

/// Runs `command` in container `name` (`ctr task exec`).
pub fn exec(world: &str, target: &str, name: &str, command: &[&str]) -> Result<Output> {
    let rec = WorldRecord::load_up(world)?;
    let n = runtime_node(&rec, target)?;
    let exec_id = format!("mg{}-{}", std::process::id(), rand_suffix());
    let mut args = vec!["task", "exec", "--exec-id", &exec_id, name];
    args.extend_from_slice(command);
    ctr(&n, &args, false)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `lab rm CLUSTER/NODE --name NAME`: the task killed and deleted, the
/// container deleted, then the CNI DEL, as the runtime runs it.
pub fn rm(world: Option<&str>, target: &str, name: &str) -> Result<String> {
    let world = crate::world::pick_world(world)?;
    let rec = WorldRecord::load_up(&world)?;
    let n = runtime_node(&rec, target)?;
    remove(&n, name)?;
    set_labels(&n, name, None)?;
    Ok(format!("container {name} on {target} removed"))
}

fn remove(n: &NodePlan, name: &str) -> Result<()> {
    remove_container(n, name)?;
    cni_del(n, &container_id(name))
}

/// The task killed and deleted, then the container.
fn remove_container(n: &NodePlan, name: &str) -> Result<()> {
    let _ = ctr(n, &["task", "kill", "-s", "SIGKILL", name], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ctr(n, &["task", "rm", "-f", name], false)?;
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() || said.contains("not found") {
            break;
        }
        if Instant::now() >= deadline {
            return Err(LabError::Command {
                cmd: format!("ctr task rm -f {name}"),
                status: out.status.to_string(),
                stderr: said,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ctr(n, &["container", "rm", name], false)?;
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() && !said.contains("not found") {
        return Err(LabError::Command {
            cmd: format!("ctr container rm {name}"),
            status: out.status.to_string(),
            stderr: said,
        });
    }
    Ok(())
}

/// The CNI DEL of a container, run as the runtime runs it.
fn cni_del(n: &NodePlan, id: &str) -> Result<()> {
    let c = cni_dir(n);
    let conf = std::fs::read(c.join("net.d").join("10-meshgate.conf"))
        .map_err(io("reading the node's CNI config".into()))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .arg(c.join("bin").join("meshgate-cni"))
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", c.join("bin"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("running meshgate-cni DEL".into()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&conf)
            .map_err(io("writing the CNI config".into()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io("waiting for meshgate-cni DEL".into()))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("meshgate-cni DEL {id}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        });
    }
    Ok(())
}

/// Every container of the world's runtime nodes killed and removed (for
/// `lab down`, before the processes stop); best effort.
pub(crate) fn stop_all(rec: &WorldRecord) {
    for c in &rec.plan.clusters {
        for n in c.nodes.iter().filter(|n| n.runtime.is_some()) {
            let Ok(out) = ctr(n, &["task", "ls", "-q"], false) else {
                continue;
            };
            for task in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = ctr(n, &["task", "kill", "-a", "-s", "SIGKILL", task], false);
            }
            let Ok(out) = ctr(n, &["container", "ls", "-q"], false) else {
                continue;
            };
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = remove(n, name);
            }
        }
    }
}

/// The containers of a runtime node, by name (`ctr container ls`).
pub fn containers(world: &str, target: &str) -> Result<Vec<String>> {
    let rec = WorldRecord::load_up(world)?;
    let n = runtime_node(&rec, target)?;
    Ok(ctr_ok(&n, &["container", "ls", "-q"], false)?
        .lines()
        .map(str::to_string)
        .collect())
}
