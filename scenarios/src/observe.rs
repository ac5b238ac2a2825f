//! Which agents `meshgate lab observe` reads flow events from.

use std::path::PathBuf;

use crate::error::{LabError, Result};
use crate::plan::agent_dir;
use crate::world::record::WorldRecord;

/// The nodes of `world` (all, or the one `cluster/node` given) as
/// (`cluster/node`, the agent's state dir), in plan order.
pub fn agent_dirs(world: &str, node: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let rec = WorldRecord::load_up(world)?;
    let all: Vec<(String, PathBuf)> = rec
        .plan
        .clusters
        .iter()
        .flat_map(|c| {
            c.nodes.iter().map(|n| {
                (
                    format!("{}/{}", c.name, n.name),
                    agent_dir(world, &c.name, &n.name),
                )
            })
        })
        .collect();
    let Some(want) = node else {
        return Ok(all);
    };
    let picked: Vec<_> = all.iter().filter(|(n, _)| n == want).cloned().collect();
    if picked.is_empty() {
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        return Err(LabError::Target {
            target: format!("{world}:{want}"),
            problem: format!("no such node (nodes: {})", names.join(", ")),
        });
    }
    Ok(picked)
}
