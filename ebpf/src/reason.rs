//! Drop reasons, verdicts, directions and attach points: the enums of
//! `bpf/mg_datapath.h`, kept in sync by the tests below (they parse the header).

use std::fmt;

macro_rules! c_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $prefix:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $c:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The C enumerator's name in `mg_datapath.h`.
            pub const fn c_name(self) -> &'static str {
                match self { $($name::$variant => concat!($prefix, $c),)+ }
            }

            /// The value as the datapath writes it.
            pub fn from_raw(raw: u8) -> Option<Self> {
                match raw { $($value => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.c_name()[$prefix.len()..].to_ascii_lowercase().replace('_', "-"))
            }
        }
    };
}

c_enum! {
    /// Why the datapath dropped a packet (`enum mg_reason`). `None` is not a drop.
    Reason, "MG_REASON_" {
        None = 0 => "NONE",
        /// The source endpoint selects egress policy and no rule allows this.
        PolicyEgress = 1 => "POLICY_EGRESS",
        /// The destination endpoint selects ingress policy and no rule allows this.
        PolicyIngress = 2 => "POLICY_INGRESS",
        /// An explicit deny rule matched.
        PolicyDeny = 3 => "POLICY_DENY",
        /// `from_pod`: the source address is not a known local endpoint.
        UnknownSource = 4 => "UNKNOWN_SOURCE",
        /// `from_pod`: the source address belongs to an endpoint on another interface.
        SourceSpoofed = 5 => "SOURCE_SPOOFED",
        /// `to_mesh`: the destination has no tunnel endpoint in the ipcache.
        NoTunnelEndpoint = 6 => "NO_TUNNEL_ENDPOINT",
        /// `to_mesh`: `bpf_skb_set_tunnel_key` failed.
        SetTunnelKey = 7 => "SET_TUNNEL_KEY",
        /// `from_mesh`: no tunnel metadata (no VNI) on the packet.
        NoTunnelKey = 8 => "NO_TUNNEL_KEY",
        /// `from_mesh`: the destination is not an endpoint of this node.
        UnknownDestination = 9 => "UNKNOWN_DESTINATION",
        /// The IPv4 header could not be read.
        Malformed = 10 => "MALFORMED",
        /// IPv6 from or to a pod (the mesh is IPv4 only).
        Ipv6 = 11 => "IPV6",
        /// Strict mode: pod traffic to a remote node that would leave unencrypted.
        StrictUnencrypted = 12 => "STRICT_UNENCRYPTED",
        /// `from_pod`: a new connection to a service VIP whose backend set is empty.
        NoServiceBackend = 13 => "NO_SERVICE_BACKEND",
        /// `from_pod`, `to_mesh`: an egress gateway policy selects the flow
        /// but has no gateway (dropped rather than sent with the pod's address).
        NoEgressGateway = 14 => "NO_EGRESS_GATEWAY",
        /// `from_mesh`: a world destination this node is not an egress gateway for.
        EgressNotGateway = 15 => "EGRESS_NOT_GATEWAY",
    }
}

c_enum! {
    /// Which program took a verdict (`enum mg_point`).
    Point, "MG_POINT_" {
        FromPod = 1 => "FROM_POD",
        ToMesh = 2 => "TO_MESH",
        FromMesh = 3 => "FROM_MESH",
        ToPod = 4 => "TO_POD",
    }
}

c_enum! {
    /// A policy entry's or a flow's verdict (`enum mg_verdict`).
    Verdict, "MG_VERDICT_" {
        Allow = 1 => "ALLOW",
        Deny = 2 => "DENY",
    }
}

c_enum! {
    /// Policy direction, seen from the local endpoint (`enum mg_direction`).
    Direction, "MG_DIR_" {
        Ingress = 0 => "INGRESS",
        Egress = 1 => "EGRESS",
    }
}

/// Reserved identities (Cilium's numbers), as in `mg_datapath.h`.
pub mod identity {
    pub const UNKNOWN: u32 = 0;
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;
    /// Identities are 24 bits: they travel in the VXLAN VNI.
    pub const MASK: u32 = 0x00ff_ffff;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const HEADER: &str = include_str!("../bpf/mg_datapath.h");

    /// `NAME = VALUE,` lines of the C enum `enum_name` in the header.
    fn c_enum(enum_name: &str) -> BTreeMap<String, u8> {
        let start = format!("enum {enum_name} {{");
        let body = HEADER
            .split_once(&start)
            .unwrap_or_else(|| panic!("`{start}` is not in mg_datapath.h"))
            .1
            .split_once("};")
            .unwrap_or_else(|| panic!("enum {enum_name} has no end"))
            .0;
        body.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("MG_"))
            .map(|l| {
                let (name, value) = l
                    .trim_end_matches(',')
                    .split_once('=')
                    .unwrap_or_else(|| panic!("enumerator without an explicit value: {l}"));
                let value = value.trim().parse().unwrap_or_else(|e| panic!("{l}: {e}"));
                (name.trim().to_owned(), value)
            })
            .collect()
    }

    fn rust<T: Copy>(
        all: &[T],
        c_name: fn(T) -> &'static str,
        raw: fn(T) -> u8,
    ) -> BTreeMap<String, u8> {
        all.iter()
            .map(|v| (c_name(*v).to_owned(), raw(*v)))
            .collect()
    }

    #[test]
    fn reasons_match_the_c_header() {
        let mut header = c_enum("mg_reason");
        let max = header.remove("MG_REASON_MAX").expect("MG_REASON_MAX");
        assert_eq!(
            header,
            rust(Reason::ALL, Reason::c_name, |r| r as u8),
            "enum mg_reason (left) vs Reason (right)"
        );
        assert_eq!(usize::from(max), Reason::ALL.len(), "MG_REASON_MAX");
        assert!(u32::from(max) <= crate::layout::REASON_SLOTS);
    }

    #[test]
    fn other_enums_match_the_c_header() {
        assert_eq!(
            c_enum("mg_point"),
            rust(Point::ALL, Point::c_name, |r| r as u8)
        );
        assert_eq!(
            c_enum("mg_verdict"),
            rust(Verdict::ALL, Verdict::c_name, |r| r as u8)
        );
        assert_eq!(
            c_enum("mg_direction"),
            rust(Direction::ALL, Direction::c_name, |r| r as u8)
        );
    }

    #[test]
    fn raw_values_round_trip() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_raw(*r as u8), Some(*r));
        }
        assert_eq!(Reason::from_raw(200), None);
        assert_eq!(Reason::PolicyIngress.to_string(), "policy-ingress");
        assert_eq!(Reason::NoEgressGateway.to_string(), "no-egress-gateway");
        assert_eq!(Reason::EgressNotGateway.to_string(), "egress-not-gateway");
    }

    #[test]
    fn identities_match_the_c_header() {
        for (name, value) in [
            ("MG_IDENTITY_UNKNOWN", identity::UNKNOWN),
            ("MG_IDENTITY_HOST", identity::HOST),
            ("MG_IDENTITY_WORLD", identity::WORLD),
            ("MG_IDENTITY_REMOTE_NODE", identity::REMOTE_NODE),
            ("MG_IDENTITY_KUBE_APISERVER", identity::KUBE_APISERVER),
            ("MG_IDENTITY_MASK", identity::MASK),
        ] {
            let line = HEADER
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("{name} not in header"));
            let v = line.split_whitespace().nth(2).unwrap_or_default();
            let parsed = match v.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16),
                None => v.parse(),
            };
            assert_eq!(parsed, Ok(value), "{name}");
        }
    }
}
