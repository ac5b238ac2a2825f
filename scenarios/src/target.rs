//! Lab targets: `[world:]cluster/pod`, `cluster/node`, `cluster/discovery`
//! (replica 1), `cluster/discovery-N` (replica N) and `x/external`.

use std::net::Ipv4Addr;

use crate::error::{LabError, Result};
use crate::world::pick_world;
use crate::world::record::{Component, WorldRecord};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    Pod {
        node: String,
    },
    Node,
    /// Discovery replica `replica` (1, 2, ...).
    Discovery {
        replica: u8,
    },
    External,
}

/// A resolved target: what it is, its namespace and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub world: String,
    /// The cluster (`x` for externals).
    pub cluster: String,
    /// Pod, node or external name; `discovery` for a discovery.
    pub name: String,
    pub kind: TargetKind,
    pub netns: String,
    /// Pod IP, node or discovery underlay IP, external IP.
    pub ip: Ipv4Addr,
}

impl Target {
    /// The process behind the target, if it has one.
    pub fn component(&self) -> Option<Component> {
        match self.kind {
            TargetKind::Node => Some(Component::Agent {
                cluster: self.cluster.clone(),
                node: self.name.clone(),
            }),
            TargetKind::Discovery { replica } => Some(Component::discovery(&self.cluster, replica)),
            TargetKind::External => Some(Component::External {
                name: self.name.clone(),
            }),
            TargetKind::Pod { .. } => None,
        }
    }
}

/// Splits `[world:]cluster/name`.
pub fn parse(target: &str) -> Result<(Option<&str>, &str, &str)> {
    let bad = |problem: &str| LabError::Target {
        target: target.to_string(),
        problem: problem.to_string(),
    };
    let (world, rest) = match target.split_once(':') {
        Some((w, rest)) => (Some(w), rest),
        None => (None, target),
    };
    let (cluster, name) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected [world:]cluster/pod, cluster/node or cluster/discovery"))?;
    if world == Some("") || cluster.is_empty() || name.is_empty() || name.contains('/') {
        return Err(bad(
            "expected [world:]cluster/pod, cluster/node or cluster/discovery",
        ));
    }
    Ok((world, cluster, name))
}

/// Resolves a target in the named world, or the only world that is up.
pub fn resolve(target: &str) -> Result<Target> {
    let (world, cluster, name) = parse(target)?;
    let world = pick_world(world)?;
    let rec = WorldRecord::load_up(&world)?;
    resolve_in(&rec, target, cluster, name)
}

pub(crate) fn resolve_in(
    rec: &WorldRecord,
    target: &str,
    cluster: &str,
    name: &str,
) -> Result<Target> {
    let plan = &rec.plan;
    let bad = |problem: String| LabError::Target {
        target: target.to_string(),
        problem,
    };
    let make = |kind, netns: &str, ip| Target {
        world: plan.world.clone(),
        cluster: cluster.to_string(),
        name: name.to_string(),
        kind,
        netns: netns.to_string(),
        ip,
    };
    if cluster == crate::scenario::EXTERNAL_WORD {
        return plan
            .externals
            .iter()
            .find(|x| x.name == name)
            .map(|x| make(TargetKind::External, &x.netns, x.ip))
            .ok_or_else(|| {
                let names: Vec<&str> = plan.externals.iter().map(|x| x.name.as_str()).collect();
                bad(format!(
                    "no external {name} (externals: {})",
                    names.join(", ")
                ))
            });
    }
    let Some(c) = plan.cluster(cluster) else {
        let names: Vec<&str> = plan.clusters.iter().map(|c| c.name.as_str()).collect();
        return Err(bad(format!(
            "world {} has no cluster {cluster} (clusters: {})",
            plan.world,
            names.join(", ")
        )));
    };
    if let Some(replica) = discovery_replica(name) {
        let Some(d) = c.discovery_replica(replica) else {
            return Err(bad(format!(
                "cluster {cluster} has {} discovery replica(s): discovery{}",
                c.discovery_replicas().count(),
                if c.replicas.is_empty() {
                    String::new()
                } else {
                    format!(", discovery-2 .. discovery-{}", c.replicas.len() + 1)
                }
            )));
        };
        return Ok(make(TargetKind::Discovery { replica }, &d.netns, d.ip));
    }
    if let Some(n) = c.node(name) {
        return Ok(make(TargetKind::Node, &n.netns, n.underlay_ip));
    }
    if let Some((n, p)) = c.pod(name) {
        return Ok(make(
            TargetKind::Pod {
                node: n.name.clone(),
            },
            &p.netns,
            p.ip,
        ));
    }
    let mut names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    names.extend(
        c.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(|p| p.name.as_str())),
    );
    Err(bad(format!(
        "cluster {cluster} has no node or pod {name} (names: discovery, {})",
        names.join(", ")
    )))
}

/// `discovery` is replica 1, `discovery-N` replica N.
fn discovery_replica(name: &str) -> Option<u8> {
    if !crate::scenario::is_discovery_name(name) {
        return None;
    }
    match name.rsplit_once('-') {
        Some((_, n)) => n.parse().ok().filter(|k| *k >= 1),
        None => Some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(parse("c1/n1").ok(), Some((None, "c1", "n1")));
        assert_eq!(
            parse("one:c1/discovery").ok(),
            Some((Some("one"), "c1", "discovery"))
        );
        for bad in ["c1", "c1/", "/n1", ":c1/n1", "c1/a/b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery_names_its_replicas() {
        assert_eq!(discovery_replica("discovery"), Some(1));
        assert_eq!(discovery_replica("discovery-2"), Some(2));
        for other in [
            "discovery-0",
            "discovery-",
            "discovery-x",
            "discovery2",
            "n1",
        ] {
            assert_eq!(discovery_replica(other), None, "{other}");
        }
    }
}
