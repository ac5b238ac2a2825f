//! `#[repr(C)]` mirrors of the structs in `bpf/mg_datapath.h`. Field for
//! field the same; the header's `_Static_assert`s and this file's tests pin
//! the sizes, and the loader checks every map's key and value sizes against
//! these types when it loads or reuses a pinned map.

/// `struct mg_ipcache_key` (LPM trie key: prefix length, then the address in
/// network byte order). aya's `lpm_trie::Key` writes the prefix length
/// itself, so the map is typed by the address part only.
pub type IpcacheAddr = [u8; 4];

/// `struct mg_ipcache_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
    /// Network byte order; 0 = no tunnel endpoint.
    pub tunnel_ip: u32,
    /// Local endpoints: host-side interface; 0 = not checked.
    pub ifindex: u32,
    pub flags: u32,
}

/// `struct mg_mesh_cidr_value` (key as the ipcache's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshCidrValue {
    pub cluster_id: u32,
}

/// `MG_IPCACHE_F_LOCAL`.
pub const IPCACHE_F_LOCAL: u32 = 0x1;
/// `MG_IPCACHE_F_WORLD`: a world prefix written for policy (CIDR identity).
pub const IPCACHE_F_WORLD: u32 = 0x2;
/// `MG_ICMP_TYPE_BASE`: policy's dport of ICMP type `t` is this + `t`.
pub const ICMP_TYPE_BASE: u16 = 256;

/// `struct mg_policy_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub local_identity: u32,
    /// 0 = any identity.
    pub remote_identity: u32,
    /// 0 = any port of `proto`.
    pub dport: u16,
    /// 0 = any protocol (then `dport` is 0).
    pub proto: u8,
    /// `enum mg_direction`.
    pub direction: u8,
}

/// `struct mg_policy_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub verdict: u32,
}

/// `struct mg_policy_sel_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicySelValue {
    pub flags: u32,
}

/// `MG_SEL_INGRESS`, `MG_SEL_EGRESS`.
pub const SEL_INGRESS: u32 = 0x1;
pub const SEL_EGRESS: u32 = 0x2;

/// `struct mg_ct_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// `struct mg_ct_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub last_seen_ns: u64,
    pub packets: u64,
}

/// `struct mg_counter`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// `struct mg_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub flags: u32,
    pub mesh_ifindex: u32,
    /// This node's tunnel IP, network byte order; 0 = unset.
    pub tunnel_ip: u32,
}

/// `MG_CFG_F_STRICT`.
pub const CFG_F_STRICT: u32 = 0x1;
/// `MG_CFG_F_DNS_PROXY`: pod DNS (port 53) goes to the host stack, for the
/// node's DNS proxy, without egress policy or egress gateway steering.
pub const CFG_F_DNS_PROXY: u32 = 0x2;

/// `struct mg_flow_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawFlowEvent {
    pub ts_ns: u64,
    pub saddr: u32,
    pub daddr: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub verdict: u8,
    pub reason: u8,
    pub point: u8,
    pub ifindex: u32,
    pub pad: u32,
}

/// `struct mg_lb_svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbSvcKey {
    /// Network byte order.
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// `struct mg_lb_svc_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbSvcValue {
    pub rev: u32,
    pub count: u16,
    pub local_count: u16,
    /// `MG_LB_AFFINITY_*`.
    pub affinity: u32,
}

/// `struct mg_lb_backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbBackendKey {
    pub rev: u32,
    pub slot: u32,
}

/// `struct mg_lb_backend_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbBackendValue {
    /// Network byte order.
    pub addr: u32,
    pub port: u16,
    pub flags: u8,
    pub pad: u8,
}

/// `struct mg_lb_ct_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbCtValue {
    /// Network byte order.
    pub addr: u32,
    pub port: u16,
    pub flags: u16,
    pub last_seen_ns: u64,
}

/// `struct mg_egress_key` without its prefix length (aya's `lpm_trie::Key`
/// writes that): the source exactly, then the destination prefix, both in
/// network byte order. The key's prefix length is 32 + the destination's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EgressAddrs {
    pub saddr: u32,
    pub daddr: u32,
}

/// `MG_EGRESS_MAX_GWS`.
pub const EGRESS_MAX_GWS: usize = 16;
/// `MG_EGRESS_F_EXCLUDED`.
pub const EGRESS_F_EXCLUDED: u32 = 0x1;
/// `MG_EGRESS_F_FQDN`: a route the DNS proxy wrote for a destinationFQDNs
/// policy, whose tag is `flags >> EGRESS_FQDN_TAG_SHIFT`.
pub const EGRESS_F_FQDN: u32 = 0x2;
/// `MG_EGRESS_F_GATEWAY_ONLY`: a route only from_mesh uses (SNAT on a
/// gateway for traffic another node steered here).
pub const EGRESS_F_GATEWAY_ONLY: u32 = 0x4;
/// `MG_EGRESS_FQDN_TAG_SHIFT`.
pub const EGRESS_FQDN_TAG_SHIFT: u32 = 16;

/// `struct mg_egress_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressValue {
    /// `MG_EGRESS_F_*`.
    pub flags: u32,
    /// 1..255 on a gateway of this route; 0 = this node is not one.
    pub snat_index: u32,
    /// `gateways[..count]` are used.
    pub count: u32,
    /// Tunnel IPs, network byte order.
    pub gateways: [u32; EGRESS_MAX_GWS],
}

/// `struct mg_egress_ct_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressCtValue {
    /// Tunnel IP, network byte order.
    pub gateway: u32,
    pub pad: u32,
    pub last_seen_ns: u64,
}

/// `MG_FQDN_MAX_PORTS`.
pub const FQDN_MAX_PORTS: usize = 8;
/// `MG_FQDN_F_ANY_PORT`.
pub const FQDN_F_ANY_PORT: u32 = 0x1;

/// `struct mg_fqdn_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FqdnKey {
    pub identity: u32,
    /// Network byte order.
    pub addr: u32,
}

/// `struct mg_fqdn_port`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnPort {
    /// Host byte order (as `PolicyKey::dport`); 0 = any port of `proto`.
    pub port: u16,
    /// 0 = any protocol.
    pub proto: u8,
    pub pad: u8,
}

/// `struct mg_fqdn_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FqdnValue {
    /// `bpf_ktime_get_ns()` clock (CLOCK_MONOTONIC).
    pub expires_ns: u64,
    /// `MG_FQDN_F_*`.
    pub flags: u32,
    /// `ports[..nports]` are used.
    pub nports: u32,
    pub ports: [FqdnPort; FQDN_MAX_PORTS],
}

/// `MG_LB_AFFINITY_*`.
pub const LB_AFFINITY_NONE: u32 = 0;
pub const LB_AFFINITY_LOCAL: u32 = 1;
pub const LB_AFFINITY_REMOTE: u32 = 2;
/// `MG_LB_BACKEND_F_LOCAL`.
pub const LB_BACKEND_F_LOCAL: u8 = 0x1;
/// `MG_LB_CT_F_REVERSE`.
pub const LB_CT_F_REVERSE: u16 = 0x1;

/// `MG_REASON_SLOTS`: length of the per-reason counter array.
pub const REASON_SLOTS: u32 = 32;

/// `MG_SLOT_EVENTS_LOST`: the `mg_drops` slot counting flow events lost
/// because the ring buffer was full.
pub const SLOT_EVENTS_LOST: u32 = 31;

/// `MG_MARK_MAGIC`: top byte of the skb mark `from_pod` sets.
pub const MARK_MAGIC: u32 = 0x6d00_0000;

/// `MG_MARK_EGRESS`: top byte of the mark `from_pod` sets (with the source
/// identity below) on traffic it steers to an egress gateway on another
/// node; the agent's ip rule routes it into the mesh device.
pub const MARK_EGRESS: u32 = 0x6c00_0000;

/// `MG_MARK_SNAT`: top byte of the mark an egress gateway sets (with the
/// SNAT index 1..255 below) on traffic it sends out; the agent's ip rule
/// and nft rule for that index route it and SNAT it to the egress IP.
pub const MARK_SNAT: u32 = 0x6b00_0000;

/// `MG_MARK_MAGIC_MASK`: the byte of the mark that says what it is.
pub const MARK_MAGIC_MASK: u32 = 0xff00_0000;

// SAFETY: all of these are plain integers without implicit padding (every
// pad is an explicit field), so any byte pattern is a valid value.
unsafe impl aya::Pod for MeshCidrValue {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for PolicySelValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for RawFlowEvent {}
unsafe impl aya::Pod for LbSvcKey {}
unsafe impl aya::Pod for LbSvcValue {}
unsafe impl aya::Pod for LbBackendKey {}
unsafe impl aya::Pod for LbBackendValue {}
unsafe impl aya::Pod for LbCtValue {}
unsafe impl aya::Pod for EgressAddrs {}
unsafe impl aya::Pod for EgressValue {}
unsafe impl aya::Pod for EgressCtValue {}
unsafe impl aya::Pod for FqdnKey {}
unsafe impl aya::Pod for FqdnValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    const HEADER: &str = include_str!("../bpf/mg_datapath.h");

    /// The sizes the header asserts with `_Static_assert(sizeof(struct NAME) == N, ...)`.
    fn header_sizes() -> std::collections::BTreeMap<String, usize> {
        HEADER
            .lines()
            .filter_map(|line| {
                let rest = line.trim().strip_prefix("_Static_assert(sizeof(struct ")?;
                let (name, rest) = rest.split_once(')')?;
                let size = rest.trim().strip_prefix("==")?.split(',').next()?.trim();
                Some((name.to_owned(), size.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn sizes_match_the_c_header() {
        let rust: std::collections::BTreeMap<String, usize> = [
            ("mg_ipcache_key", 4 + size_of::<IpcacheAddr>()),
            ("mg_ipcache_value", size_of::<IpcacheValue>()),
            ("mg_policy_key", size_of::<PolicyKey>()),
            ("mg_policy_value", size_of::<PolicyValue>()),
            ("mg_policy_sel_value", size_of::<PolicySelValue>()),
            ("mg_ct_key", size_of::<CtKey>()),
            ("mg_ct_value", size_of::<CtValue>()),
            ("mg_counter", size_of::<Counter>()),
            ("mg_config", size_of::<Config>()),
            ("mg_mesh_cidr_value", size_of::<MeshCidrValue>()),
            ("mg_flow_event", size_of::<RawFlowEvent>()),
            ("mg_lb_svc_key", size_of::<LbSvcKey>()),
            ("mg_lb_svc_value", size_of::<LbSvcValue>()),
            ("mg_lb_backend_key", size_of::<LbBackendKey>()),
            ("mg_lb_backend_value", size_of::<LbBackendValue>()),
            ("mg_lb_ct_value", size_of::<LbCtValue>()),
            ("mg_egress_key", 4 + size_of::<EgressAddrs>()),
            ("mg_egress_value", size_of::<EgressValue>()),
            ("mg_egress_ct_value", size_of::<EgressCtValue>()),
            ("mg_fqdn_key", size_of::<FqdnKey>()),
            ("mg_fqdn_port", size_of::<FqdnPort>()),
            ("mg_fqdn_value", size_of::<FqdnValue>()),
        ]
        .into_iter()
        .map(|(name, size)| (name.to_owned(), size))
        .collect();
        assert_eq!(
            header_sizes(),
            rust,
            "header sizes (left) vs Rust mirror (right)"
        );
    }

    fn header_define(name: &str) -> u32 {
        let line = HEADER
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name) && l.starts_with("#define"))
            .unwrap_or_else(|| panic!("#define {name} is not in mg_datapath.h"));
        let value = line.split_whitespace().nth(2).unwrap_or_default();
        match value.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .unwrap_or_else(|e| panic!("{name} = {value}: {e}"))
    }

    #[test]
    fn constants_match_the_c_header() {
        assert_eq!(header_define("MG_IPCACHE_F_LOCAL"), IPCACHE_F_LOCAL);
        assert_eq!(header_define("MG_IPCACHE_F_WORLD"), IPCACHE_F_WORLD);
        assert_eq!(
            header_define("MG_ICMP_TYPE_BASE"),
            u32::from(ICMP_TYPE_BASE)
        );
        assert_eq!(header_define("MG_SEL_INGRESS"), SEL_INGRESS);
        assert_eq!(header_define("MG_SEL_EGRESS"), SEL_EGRESS);
        assert_eq!(header_define("MG_CFG_F_STRICT"), CFG_F_STRICT);
        assert_eq!(header_define("MG_REASON_SLOTS"), REASON_SLOTS);
        assert_eq!(header_define("MG_MARK_MAGIC"), MARK_MAGIC);
        assert_eq!(header_define("MG_SLOT_EVENTS_LOST"), SLOT_EVENTS_LOST);
        assert_eq!(header_define("MG_LB_AFFINITY_NONE"), LB_AFFINITY_NONE);
        assert_eq!(header_define("MG_LB_AFFINITY_LOCAL"), LB_AFFINITY_LOCAL);
        assert_eq!(header_define("MG_LB_AFFINITY_REMOTE"), LB_AFFINITY_REMOTE);
        assert_eq!(
            header_define("MG_LB_BACKEND_F_LOCAL"),
            u32::from(LB_BACKEND_F_LOCAL)
        );
        assert_eq!(
            header_define("MG_LB_CT_F_REVERSE"),
            u32::from(LB_CT_F_REVERSE)
        );
        assert_eq!(header_define("MG_MARK_EGRESS"), MARK_EGRESS);
        assert_eq!(header_define("MG_MARK_SNAT"), MARK_SNAT);
        assert_eq!(header_define("MG_MARK_MAGIC_MASK"), MARK_MAGIC_MASK);
        assert_eq!(header_define("MG_EGRESS_MAX_GWS") as usize, EGRESS_MAX_GWS);
        assert_eq!(header_define("MG_EGRESS_F_EXCLUDED"), EGRESS_F_EXCLUDED);
        assert_eq!(header_define("MG_EGRESS_F_FQDN"), EGRESS_F_FQDN);
        assert_eq!(
            header_define("MG_EGRESS_FQDN_TAG_SHIFT"),
            EGRESS_FQDN_TAG_SHIFT
        );
        assert_eq!(header_define("MG_CFG_F_DNS_PROXY"), CFG_F_DNS_PROXY);
        assert_eq!(header_define("MG_FQDN_MAX_PORTS") as usize, FQDN_MAX_PORTS);
        assert_eq!(header_define("MG_FQDN_F_ANY_PORT"), FQDN_F_ANY_PORT);
        const { assert!(SLOT_EVENTS_LOST < REASON_SLOTS) };
    }
}
