//! Typed handles on the datapath's maps. They work on the maps of a loaded
//! [`crate::Datapath`] or, through [`Maps::open_pinned`], on the pinned maps
//! alone (another process, e.g. the DNS proxy, or while the agent is down).

mod config;
mod conntrack;
mod counters;
mod egress;
mod events;
mod fqdn;
mod ipcache;
mod lb;
mod mesh_cidrs;
mod policy;

use std::mem::size_of;
use std::path::Path;

use aya::maps::{Map, MapData, MapInfo, MapType};

pub use config::ConfigMap;
pub use conntrack::{Conntrack, CtEntry};
pub use counters::DropCounters;
pub use egress::{Egress, EgressFlow, EgressRoute, EGRESS_MAX_GATEWAYS};
pub use events::{FlowEvent, FlowEvents};
pub use fqdn::{Fqdn, FqdnEntry, FqdnPorts, FQDN_MAX_PORTS};
pub use ipcache::{IpCache, IpcacheEntry};
pub use lb::{Affinity, Backend, Frontend, LbConnection, LbService, LoadBalancer, RETIRE_GRACE};
pub use mesh_cidrs::MeshCidrs;
pub use policy::{icmp_type_port, Policy, PolicyRule, Proto};

use crate::error::{Error, Result};
use crate::layout::*;

/// A map of the object: name, type, key and value sizes this build expects.
pub(crate) struct MapSpec {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
}

const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// The config map's name (its pin is rebuilt when its layout changed).
pub(crate) const CONFIG_MAP: &str = config::NAME;

pub(crate) const MAP_SPECS: &[MapSpec] = &[
    MapSpec {
        name: ipcache::NAME,
        map_type: MapType::LpmTrie,
        key_size: 4 + size::<IpcacheAddr>(),
        value_size: size::<IpcacheValue>(),
    },
    MapSpec {
        name: mesh_cidrs::NAME,
        map_type: MapType::LpmTrie,
        key_size: 4 + size::<IpcacheAddr>(),
        value_size: size::<MeshCidrValue>(),
    },
    MapSpec {
        name: policy::NAME,
        map_type: MapType::Hash,
        key_size: size::<PolicyKey>(),
        value_size: size::<PolicyValue>(),
    },
    MapSpec {
        name: policy::SEL_NAME,
        map_type: MapType::Hash,
        key_size: size::<u32>(),
        value_size: size::<PolicySelValue>(),
    },
    MapSpec {
        name: conntrack::NAME,
        map_type: MapType::LruHash,
        key_size: size::<CtKey>(),
        value_size: size::<CtValue>(),
    },
    MapSpec {
        name: counters::NAME,
        map_type: MapType::PerCpuArray,
        key_size: size::<u32>(),
        value_size: size::<Counter>(),
    },
    MapSpec {
        name: config::NAME,
        map_type: MapType::Array,
        key_size: size::<u32>(),
        value_size: size::<Config>(),
    },
    MapSpec {
        name: lb::SVC_NAME,
        map_type: MapType::Hash,
        key_size: size::<LbSvcKey>(),
        value_size: size::<LbSvcValue>(),
    },
    MapSpec {
        name: lb::BACKENDS_NAME,
        map_type: MapType::Hash,
        key_size: size::<LbBackendKey>(),
        value_size: size::<LbBackendValue>(),
    },
    MapSpec {
        name: lb::CT_NAME,
        map_type: MapType::LruHash,
        key_size: size::<CtKey>(),
        value_size: size::<LbCtValue>(),
    },
    MapSpec {
        name: egress::NAME,
        map_type: MapType::LpmTrie,
        key_size: 4 + size::<EgressAddrs>(),
        value_size: size::<EgressValue>(),
    },
    MapSpec {
        name: egress::CT_NAME,
        map_type: MapType::LruHash,
        key_size: size::<CtKey>(),
        value_size: size::<EgressCtValue>(),
    },
    MapSpec {
        name: fqdn::NAME,
        map_type: MapType::Hash,
        key_size: size::<FqdnKey>(),
        value_size: size::<FqdnValue>(),
    },
    MapSpec {
        name: events::NAME,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
    },
];

impl MapSpec {
    fn describe(map_type: MapType, key: u32, value: u32) -> String {
        format!("{map_type:?}, key {key} bytes, value {value} bytes")
    }

    /// Fails if `info` (a pinned or freshly created map) is not what this build expects.
    pub(crate) fn check(&self, info: &MapInfo, path: &Path) -> Result<()> {
        let found_type = info.map_type().map_err(|source| Error::Map {
            name: self.name,
            action: "reading its type",
            source,
        })?;
        if found_type != self.map_type
            || info.key_size() != self.key_size
            || info.value_size() != self.value_size
        {
            return Err(Error::PinnedMapMismatch {
                path: path.to_owned(),
                expected: Self::describe(self.map_type, self.key_size, self.value_size),
                found: Self::describe(found_type, info.key_size(), info.value_size()),
            });
        }
        Ok(())
    }
}

/// All the maps of the datapath.
pub struct Maps {
    pub ipcache: IpCache,
    pub mesh_cidrs: MeshCidrs,
    pub policy: Policy,
    pub conntrack: Conntrack,
    pub drops: DropCounters,
    pub config: ConfigMap,
    pub events: FlowEvents,
    pub lb: LoadBalancer,
    pub egress: Egress,
    pub fqdn: Fqdn,
}

impl Maps {
    /// Opens the maps pinned in `maps_dir` (`<pin dir>/maps`) without loading programs.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self> {
        let mut open = |name: &'static str| -> Result<Map> {
            let path = maps_dir.join(name);
            let spec = spec(name);
            let info = MapInfo::from_pin(&path).map_err(|source| Error::Map {
                name,
                action: "opening the pin",
                source,
            })?;
            spec.check(&info, &path)?;
            let data = MapData::from_pin(&path).map_err(|source| Error::Map {
                name,
                action: "opening the pin",
                source,
            })?;
            Map::from_map_data(data).map_err(|source| Error::Map {
                name,
                action: "typing",
                source,
            })
        };
        Self::from_maps(&mut open)
    }

    pub(crate) fn from_maps(take: &mut dyn FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            ipcache: IpCache::new(take(ipcache::NAME)?)?,
            mesh_cidrs: MeshCidrs::new(take(mesh_cidrs::NAME)?)?,
            policy: Policy::new(take(policy::NAME)?, take(policy::SEL_NAME)?)?,
            conntrack: Conntrack::new(take(conntrack::NAME)?)?,
            drops: DropCounters::new(take(counters::NAME)?)?,
            config: ConfigMap::new(take(config::NAME)?)?,
            events: FlowEvents::new(take(events::NAME)?)?,
            lb: LoadBalancer::new(
                take(lb::SVC_NAME)?,
                take(lb::BACKENDS_NAME)?,
                take(lb::CT_NAME)?,
            )?,
            egress: Egress::new(take(egress::NAME)?, take(egress::CT_NAME)?)?,
            fqdn: Fqdn::new(take(fqdn::NAME)?)?,
        })
    }
}

fn spec(name: &str) -> &'static MapSpec {
    MAP_SPECS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| unreachable!("every map name has a spec"))
}

pub(crate) fn typed<T>(
    name: &'static str,
    map: Map,
    convert: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
) -> Result<T> {
    convert(map).map_err(|source| Error::Map {
        name,
        action: "typing",
        source,
    })
}

pub(crate) fn map_err(
    name: &'static str,
    action: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map {
        name,
        action,
        source,
    }
}

/// aya reports a missing key as `KeyNotFound` on lookups but as the syscall's
/// ENOENT on deletes: both mean "not there".
pub(crate) fn is_not_found(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}
