#![allow(clippy::unwrap_used)]
//! The deploy manifests (`deploy/kubernetes/`), tested offline: every
//! overlay renders with `kubectl kustomize` (installed by `cargo xtask
//! deps`), every rendered object reads into its k8s-openapi type with no
//! field left over, the agent's ClusterRole is exactly what its watchers
//! read (generated from `resources`), every Service selects a workload,
//! and every meshgate command line parses with the binary's own CLI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clap::Parser;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

const OVERLAYS: [&str; 2] = ["overlays/embedded", "overlays/etcd"];

/// `kubectl kustomize dir`'s objects.
fn render(dir: &str) -> Vec<Value> {
    let path = deploy().join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("running kubectl ({e}): `cargo xtask deps` installs it (Debian's kubernetes-client)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The paths of `given` that `read` (the object as its type wrote it back)
/// does not hold: fields the type does not know, or values it changed.
fn lost(given: &Value, read: &Value, at: &str, out: &mut Vec<String>) {
    match (given, read) {
        (Value::Object(g), Value::Object(r)) => {
            for (k, v) in g {
                match r.get(k) {
                    Some(rv) => lost(v, rv, &format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k}")),
                }
            }
        }
        (Value::Array(g), Value::Array(r)) if g.len() == r.len() => {
            for (i, (gv, rv)) in g.iter().zip(r).enumerate() {
                lost(gv, rv, &format!("{at}[{i}]"), out);
            }
        }
        (g, r) if g == r => {}
        // A port or quantity written as a number or a string reads back the same.
        (g, r) if g.to_string().trim_matches('"') == r.to_string().trim_matches('"') => {}
        _ => out.push(format!("{at}: {given} read as {read}")),
    }
}

fn check_type<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
    out: &mut Vec<String>,
) {
    let name = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
    match serde_json::from_value::<T>(obj.clone()) {
        Ok(t) => {
            let back = serde_json::to_value(&t).unwrap();
            let mut l = Vec::new();
            lost(obj, &back, "", &mut l);
            out.extend(l.into_iter().map(|p| format!("{name}: {p}")));
        }
        Err(e) => out.push(format!("{name}: {e}")),
    }
}

fn check_object(obj: &Value, problems: &mut Vec<String>) {
    match obj["kind"].as_str().unwrap_or_default() {
        "Namespace" => check_type::<Namespace>(obj, problems),
        "ConfigMap" => check_type::<ConfigMap>(obj, problems),
        "ServiceAccount" => check_type::<ServiceAccount>(obj, problems),
        "Service" => check_type::<Service>(obj, problems),
        "ClusterRole" => check_type::<ClusterRole>(obj, problems),
        "ClusterRoleBinding" => check_type::<ClusterRoleBinding>(obj, problems),
        "DaemonSet" => check_type::<DaemonSet>(obj, problems),
        "Deployment" => check_type::<Deployment>(obj, problems),
        "StatefulSet" => check_type::<StatefulSet>(obj, problems),
        "CustomResourceDefinition" => check_type::<CustomResourceDefinition>(obj, problems),
        other => problems.push(format!("{other}: a kind this test does not know; add it")),
    }
}

#[test]
fn every_overlay_renders_and_every_object_reads_into_its_type_with_nothing_left_over() {
    for dir in OVERLAYS.iter().chain(&["crds"]) {
        let objects = render(dir);
        assert!(!objects.is_empty(), "{dir} renders nothing");
        let mut problems = Vec::new();
        for o in &objects {
            check_object(o, &mut problems);
        }
        assert!(problems.is_empty(), "{dir}:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_crds_render_as_meshgate_crds_makes_them() {
    let rendered = render("crds");
    let made: Vec<Value> = meshgate_k8s::crds::all()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    assert_eq!(rendered.len(), made.len());
    for m in &made {
        let r = rendered
            .iter()
            .find(|r| r["metadata"]["name"] == m["metadata"]["name"])
            .unwrap();
        assert_eq!(r, m, "{}", m["metadata"]["name"]);
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn the_agent_and_discovery_may_list_and_watch_exactly_what_their_watchers_read() {
    let committed = std::fs::read_to_string(deploy().join("base/clusterroles.yaml")).unwrap();
    assert_eq!(
        committed,
        meshgate_k8s::rbac::to_yaml(&meshgate_k8s::rbac::all()).unwrap(),
        "base/clusterroles.yaml is stale: run `cargo run -p meshgate-gateway --bin meshgate -- rbac > \
         deploy/kubernetes/base/clusterroles.yaml`"
    );
    for dir in OVERLAYS {
        let objects = render(dir);
        let roles = of_kind(&objects, "ClusterRole");
        let bindings = of_kind(&objects, "ClusterRoleBinding");
        assert_eq!(
            roles.len(),
            2,
            "{dir}: the agent's and discovery's ClusterRoles only"
        );
        assert_eq!(bindings.len(), 2, "{dir}");
        assert!(
            of_kind(&objects, "Role").is_empty() && of_kind(&objects, "RoleBinding").is_empty()
        );
        for (want, workload) in [
            (meshgate_k8s::rbac::agent(), "DaemonSet"),
            (
                meshgate_k8s::rbac::discovery(),
                if dir.ends_with("etcd") {
                    "Deployment"
                } else {
                    "StatefulSet"
                },
            ),
        ] {
            let want = serde_json::to_value(want).unwrap();
            let name = &want["metadata"]["name"];
            let role = roles
                .iter()
                .find(|r| r["metadata"]["name"] == *name)
                .unwrap();
            assert_eq!(role["rules"], want["rules"], "{dir}: {name}'s rules");
            // Bound to its workload's service account, in meshgate-system.
            let binding = bindings
                .iter()
                .find(|b| b["roleRef"]["name"] == *name)
                .unwrap();
            let sa =
                &of_kind(&objects, workload)[0]["spec"]["template"]["spec"]["serviceAccountName"];
            assert_eq!(binding["subjects"][0]["name"], *sa, "{dir}: {name}");
            assert_eq!(binding["subjects"][0]["namespace"], "meshgate-system");
            assert_eq!(binding["subjects"].as_array().unwrap().len(), 1);
        }
    }
    // Every resource the watchers read is in its component's rules.
    for (role, watched) in [
        (
            meshgate_k8s::rbac::agent(),
            meshgate_k8s::resources::agent(),
        ),
        (
            meshgate_k8s::rbac::discovery(),
            meshgate_k8s::resources::discovery(),
        ),
    ] {
        let rules = role.rules.unwrap();
        for w in watched {
            assert!(
                rules
                    .iter()
                    .any(|r| r.api_groups.as_ref().unwrap()[0] == w.group
                        && r.resources.as_ref().unwrap().iter().any(|p| p == w.plural)
                        && r.verbs == ["list", "watch"]),
                "{} is not granted",
                w.plural
            );
        }
    }
}

/// The pod templates of the workloads.
fn templates(objects: &[Value]) -> Vec<(String, PodTemplateSpec)> {
    objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("DaemonSet" | "Deployment" | "StatefulSet")
            )
        })
        .map(|o| {
            (
                format!("{} {}", o["kind"], o["metadata"]["name"]),
                serde_json::from_value(o["spec"]["template"].clone()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_service_selects_a_workload() {
    for dir in OVERLAYS {
        let objects = render(dir);
        let pods = templates(&objects);
        for svc in of_kind(&objects, "Service") {
            let sel: BTreeMap<String, String> =
                serde_json::from_value(svc["spec"]["selector"].clone()).unwrap();
            assert!(
                pods.iter().any(|(_, t)| {
                    let labels = t
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.clone())
                        .unwrap_or_default();
                    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                }),
                "{dir}: Service {} selects no pod",
                svc["metadata"]["name"]
            );
        }
    }
}

/// A container's command line with `$(VAR)` expanded as the kubelet would:
/// from its env (values, the ConfigMap's keys, sample field values) and
/// the Service variables of the namespace.
fn argv(c: &Container, objects: &[Value]) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "MESHGATE_DISCOVERY_SERVICE_HOST".into(),
        "10.96.0.20".into(),
    );
    env.insert("MESHGATE_DISCOVERY_SERVICE_PORT".into(), "7100".into());
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            v.clone()
        } else {
            let from = e.value_from.as_ref().unwrap();
            if let Some(cm) = &from.config_map_key_ref {
                let map = of_kind(objects, "ConfigMap")
                    .into_iter()
                    .find(|m| m["metadata"]["name"] == cm.name)
                    .unwrap_or_else(|| panic!("ConfigMap {} is not rendered", cm.name));
                map["data"][&cm.key]
                    .as_str()
                    .unwrap_or_else(|| panic!("ConfigMap {} has no {}", cm.name, cm.key))
                    .to_string()
            } else {
                match from.field_ref.as_ref().unwrap().field_path.as_str() {
                    "spec.nodeName" => "node-1".into(),
                    "status.hostIP" => "192.0.2.10".into(),
                    other => panic!("no sample value for field {other}"),
                }
            }
        };
        env.insert(e.name.clone(), value);
    }
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(|a| {
            let mut a = a.clone();
            for (k, v) in &env {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(
                !a.contains("$("),
                "{}: {a} names a variable the container lacks",
                c.name
            );
            a
        })
        .collect()
}

/// The agents' Secret as the README makes it (`meshgate certs`, then
/// `ca.crt`, `<node>.crt`, `<node>.key`), in a directory.
fn agent_secret() -> tempfile::TempDir {
    let made = tempfile::tempdir().unwrap();
    let req = crate::certs_cmd::request(&crate::certs_cmd::CertsArgs {
        out: made.path().into(),
        mesh: "m".into(),
        clusters: vec!["cluster1".into()],
        sans: vec![],
        agents: vec!["cluster1/node-1".into()],
        force: false,
    })
    .unwrap();
    meshgate_model::certs::files::write_certs(made.path(), &req).unwrap();
    let secret = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("ca.pem", "ca.crt"),
        ("agents/cluster1/node-1.pem", "node-1.crt"),
        ("agents/cluster1/node-1-key.pem", "node-1.key"),
    ] {
        std::fs::copy(made.path().join(from), secret.path().join(to)).unwrap();
    }
    secret
}

#[test]
fn every_meshgate_command_line_parses_with_the_binary_s_cli() {
    let secret = agent_secret();
    let mount = format!("{}/", secret.path().display());
    for dir in OVERLAYS {
        let objects = render(dir);
        let mut seen = Vec::new();
        for (workload, t) in templates(&objects) {
            let spec = t.spec.unwrap();
            for c in spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
            {
                let argv: Vec<String> = argv(c, &objects)
                    .into_iter()
                    .map(|a| a.replace("/etc/meshgate/tls/", &mount))
                    .collect();
                assert!(
                    argv[0].ends_with("/meshgate"),
                    "{workload}/{}: {argv:?}",
                    c.name
                );
                let cli = crate::cli::Cli::try_parse_from(&argv)
                    .unwrap_or_else(|e| panic!("{dir} {workload}/{}: {argv:?}:\n{e}", c.name));
                // The agent's flags also pass its own checks (files aside).
                if let crate::cli::Command::Agent(args) = cli.command {
                    let cfg = match args.resolve() {
                        Ok(cfg) => cfg,
                        Err(e) => panic!("{dir} {workload}/agent: {e:#}"),
                    };
                    assert!(cfg.inventory.is_kubernetes());
                    assert!(cfg.pod_cidr_from_node);
                }
                seen.push(c.name.clone());
            }
        }
        seen.sort();
        assert_eq!(
            seen,
            ["agent", "discovery", "dnsproxy", "install-cni"],
            "{dir}"
        );
    }
}
