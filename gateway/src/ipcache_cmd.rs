//! `meshgate ipcache`: prints an agent's ipcache (`<state-dir>/ipcache.json`)
//! as a table: IP, identity, cluster/node, labels if known.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use meshgate_model::identity::{canonical_key, reserved_name, CLUSTER_LABEL, NAMESPACE_LABEL};

use meshgate_agent::ipcache::{self, IpCache};

/// The table text (pure). The namespace and cluster labels are left out of
/// the labels column: the ENDPOINT and CLUSTER/NODE columns show them.
pub fn table(cache: &IpCache) -> String {
    let mut rows = vec![[
        "IP".to_string(),
        "IDENTITY".to_string(),
        "CLUSTER/NODE".to_string(),
        "ENDPOINT".to_string(),
        "LABELS".to_string(),
    ]];
    for (ip, e) in &cache.entries {
        let labels = match cache.identities.get(&e.identity) {
            Some(l) => {
                let mut l = l.clone();
                l.remove(NAMESPACE_LABEL);
                l.remove(CLUSTER_LABEL);
                canonical_key(&l)
            }
            None => reserved_name(e.identity).unwrap_or("?").to_string(),
        };
        rows.push([
            ip.to_string(),
            e.identity.to_string(),
            format!("{}/{}", e.cluster, e.node),
            format!("{}/{}", e.namespace, e.name),
            labels,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn run(state_dir: &Path) -> anyhow::Result<ExitCode> {
    let cache = ipcache::load(state_dir)?.with_context(|| {
        format!(
            "no {} in {} (is the agent running with --state-dir {} and connected to discovery?)",
            ipcache::IPCACHE_FILE,
            state_dir.display(),
            state_dir.display()
        )
    })?;
    #[allow(clippy::print_stdout)]
    {
        print!("{}", table(&cache));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use meshgate_agent::ipcache::IpCacheEntry;

    #[test]
    fn table_shows_labels_without_ns_and_cluster() {
        let mut c = IpCache::default();
        c.entries.insert(
            "10.1.0.10".parse().unwrap(),
            IpCacheEntry {
                identity: 65_792,
                node: "n1".into(),
                cluster: "c1".into(),
                namespace: "default".into(),
                name: "n1-a".into(),
            },
        );
        c.identities.insert(
            65_792,
            [
                ("app".to_string(), "web".to_string()),
                (NAMESPACE_LABEL.to_string(), "default".to_string()),
            ]
            .into(),
        );
        let t = table(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "IP         IDENTITY  CLUSTER/NODE  ENDPOINT      LABELS"
        );
        assert_eq!(
            lines[1],
            "10.1.0.10  65792     c1/n1         default/n1-a  app=web"
        );
    }
}
