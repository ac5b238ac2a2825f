/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * meshgate datapath: map layouts, constants and drop reason codes shared by
 * the tc programs in datapath.c and mirrored by #[repr(C)] types in
 * ebpf/src/layout.rs and ebpf/src/reason.rs. Any change here must be made
 * there too; the crate's unit tests compare both sides.
 *
 * Byte order: IPv4 addresses are kept in network byte order everywhere
 * (as they are on the wire); ports and identities in host byte order.
 */
#ifndef MG_DATAPATH_H
#define MG_DATAPATH_H

#include <linux/types.h>

/* Reserved identities (Cilium's numbers). */
#define MG_IDENTITY_UNKNOWN 0
#define MG_IDENTITY_HOST 1
#define MG_IDENTITY_WORLD 2
#define MG_IDENTITY_REMOTE_NODE 6
#define MG_IDENTITY_KUBE_APISERVER 7
#define MG_IDENTITY_MASK 0x00ffffff

/* skb->mark as set by from_pod: magic in the top byte, identity below. */
#define MG_MARK_MAGIC 0x6d000000
#define MG_MARK_MAGIC_MASK 0xff000000
/*
 * from_pod: egress gateway traffic (| identity); to_mesh takes the remote
 * from mg_egress_ct and puts MG_MARK_MAGIC | identity back (the VXLAN
 * device routes the encapsulated packet with the mark)
 */
#define MG_MARK_EGRESS 0x6c000000
/*
 * on a gateway: SNAT this flow (| snat index 1..255; the agent's nft rule
 * per egress IP matches it)
 */
#define MG_MARK_SNAT 0x6b000000
#define MG_MARK_SNAT_INDEX_MASK 0x000000ff

/* Why a packet was dropped. 0 is not a drop. */
enum mg_reason {
	MG_REASON_NONE = 0,
	/* the source endpoint selects egress policy and no rule allows this */
	MG_REASON_POLICY_EGRESS = 1,
	/* the destination endpoint selects ingress policy and no rule allows this */
	MG_REASON_POLICY_INGRESS = 2,
	/* an explicit deny rule matched (deny wins over allow) */
	MG_REASON_POLICY_DENY = 3,
	/* from_pod: the source address is not a known endpoint */
	MG_REASON_UNKNOWN_SOURCE = 4,
	/* from_pod: the source address belongs to an endpoint on another interface */
	MG_REASON_SOURCE_SPOOFED = 5,
	/* to_mesh: the destination has no tunnel endpoint in the ipcache */
	MG_REASON_NO_TUNNEL_ENDPOINT = 6,
	/* to_mesh: bpf_skb_set_tunnel_key failed */
	MG_REASON_SET_TUNNEL_KEY = 7,
	/* from_mesh: the packet carries no tunnel metadata (no VNI) */
	MG_REASON_NO_TUNNEL_KEY = 8,
	/* from_mesh: the destination is not an endpoint of this node */
	MG_REASON_UNKNOWN_DESTINATION = 9,
	/* the IPv4 header could not be read */
	MG_REASON_MALFORMED = 10,
	/* IPv6 from or to a pod: the mesh is IPv4 only */
	MG_REASON_IPV6 = 11,
	/* strict mode: pod traffic to a remote node that would leave unencrypted */
	MG_REASON_STRICT_UNENCRYPTED = 12,
	/* from_pod: a new connection to a service VIP whose chosen backend set is empty */
	MG_REASON_NO_SERVICE_BACKEND = 13,
	/* from_pod, to_mesh: an egress gateway policy selects this flow but it has no gateway */
	MG_REASON_NO_EGRESS_GATEWAY = 14,
	/* from_mesh: a world destination this node is not an egress gateway for */
	MG_REASON_EGRESS_NOT_GATEWAY = 15,
	MG_REASON_MAX = 16,
};

/* Size of the per-reason counter array (room to add reasons). */
#define MG_REASON_SLOTS 32
/*
 * The last slot of mg_drops is not a packet drop: it counts flow events lost
 * because the ring buffer was full (packets = events, bytes = 0).
 */
#define MG_SLOT_EVENTS_LOST 31

/* Where a verdict was taken (flow event `point`). */
enum mg_point {
	MG_POINT_FROM_POD = 1,
	MG_POINT_TO_MESH = 2,
	MG_POINT_FROM_MESH = 3,
	MG_POINT_TO_POD = 4,
};

enum mg_verdict {
	MG_VERDICT_ALLOW = 1,
	MG_VERDICT_DENY = 2,
};

enum mg_direction {
	MG_DIR_INGRESS = 0,
	MG_DIR_EGRESS = 1,
};

/* mg_ipcache: LPM trie, IPv4 prefix -> endpoint. */
struct mg_ipcache_key {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

#define MG_IPCACHE_F_LOCAL 0x1 /* an endpoint of this node */
/*
 * A world prefix the agent writes for policy: a CIDR rule's prefix (its
 * node-local CIDR identity, 0x100..=0xffff) or a kube-apiserver address
 * (identity 7). The identity is what policy sees; for everything else
 * (FQDN admission, egress gateway steering, strict mode, tunnels) the
 * address is a world address, as with no entry. Such an entry never applies
 * inside a mesh pod CIDR (ipcache_lookup ignores it there): CIDR rules
 * select world addresses, not endpoints. Its identity never leaves the node
 * (to_mesh sends world).
 */
#define MG_IPCACHE_F_WORLD 0x2

struct mg_ipcache_value {
	__u32 identity;
	__u32 tunnel_ip; /* node tunnel endpoint, network order; 0 = none */
	__u32 ifindex;   /* local endpoints: host-side interface, 0 = unchecked */
	__u32 flags;     /* MG_IPCACHE_F_* */
};

/*
 * mg_policy: hash, (local identity, remote identity, port, proto, direction)
 * -> verdict. remote_identity 0 matches any identity, dport 0 any port of
 * proto, proto 0 any protocol (dport must then be 0). ICMP (proto 1) has no
 * ports: dport is MG_ICMP_TYPE_BASE + the ICMP type (0 = any type).
 */
#define MG_ICMP_TYPE_BASE 256
struct mg_policy_key {
	__u32 local_identity;
	__u32 remote_identity;
	__u16 dport;
	__u8 proto;
	__u8 direction; /* enum mg_direction */
};

struct mg_policy_value {
	__u32 verdict; /* enum mg_verdict */
};

/*
 * mg_policy_sel: hash, identity -> which directions policy selects it in.
 * An identity absent here, or without the direction's bit, allows all in
 * that direction (as an unselected pod in Kubernetes).
 */
#define MG_SEL_INGRESS 0x1
#define MG_SEL_EGRESS 0x2

struct mg_policy_sel_value {
	__u32 flags;
};

/* mg_ct: LRU hash, forward 5-tuple of an allowed flow -> state. */
struct mg_ct_key {
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct mg_ct_value {
	__u64 last_seen_ns; /* bpf_ktime_get_ns() */
	__u64 packets;      /* both directions */
};

/* A conntrack entry unused for this long no longer admits replies. */
#define MG_CT_LIFETIME_NS (300ULL * 1000 * 1000 * 1000)

/* mg_drops: per-CPU array indexed by enum mg_reason. */
struct mg_counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * mg_mesh_cidrs: LPM trie, the pod CIDRs of every cluster of the mesh
 * (key as mg_ipcache_key). Strict mode guards every address inside them,
 * whether or not the ipcache knows it.
 */
struct mg_mesh_cidr_value {
	__u32 cluster_id;
};

/* mg_config: array with one entry. */
#define MG_CFG_F_STRICT 0x1
/*
 * The node's DNS proxy runs: from_pod passes a pod's UDP/TCP packet to port
 * 53 (not a reply, not translated by the load balancer) to the host stack
 * without the source's egress policy and without egress gateway steering,
 * marked MG_MARK_MAGIC | identity as always; the proxy's nft rule DNATs it
 * to the proxy, which enforces DNS policy. Strict mode and the ingress
 * policy of a local destination still apply. Set by the proxy (through the
 * pins) once its DNAT rule is in place, cleared before it is removed.
 */
#define MG_CFG_F_DNS_PROXY 0x2

struct mg_config {
	__u32 flags;          /* MG_CFG_F_* */
	__u32 mesh_ifindex;   /* strict mode: the only interface remote pod traffic may leave by */
	__u32 tunnel_ip;      /* this node's tunnel IP, network order; 0 = unset */
};

/*
 * Service load balancing (global services).
 *
 * mg_lb_svc: hash, (VIP, port, proto) -> the service's current backend set.
 * The backends live in mg_lb_backends under (rev, slot). A new set is
 * written under a fresh rev, then the service entry is switched to it in one
 * update, then the old rev's slots are deleted: a connection never sees a
 * half-written set. Slots [0, local_count) are backends of this node's
 * cluster, [local_count, count) of other clusters.
 */
#define MG_LB_AFFINITY_NONE 0   /* any backend */
#define MG_LB_AFFINITY_LOCAL 1  /* this cluster's while any exists, else others */
#define MG_LB_AFFINITY_REMOTE 2 /* other clusters' while any exists, else local */

struct mg_lb_svc_key {
	__u32 vip; /* network order */
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct mg_lb_svc_value {
	__u32 rev;
	__u16 count;
	__u16 local_count;
	__u32 affinity; /* MG_LB_AFFINITY_* */
};

struct mg_lb_backend_key {
	__u32 rev;
	__u32 slot;
};

#define MG_LB_BACKEND_F_LOCAL 0x1 /* in this node's cluster */

struct mg_lb_backend_value {
	__u32 addr; /* network order */
	__u16 port;
	__u8 flags; /* MG_LB_BACKEND_F_* */
	__u8 pad;
};

/*
 * mg_lb_ct: LRU hash keyed by a 5-tuple (struct mg_ct_key). Forward entry:
 * client -> VIP:port as the client sent it -> the backend chosen. Reverse
 * entry (MG_LB_CT_F_REVERSE): backend -> client as the reply comes -> the
 * VIP:port the reply's source is rewritten to.
 */
#define MG_LB_CT_F_REVERSE 0x1

struct mg_lb_ct_value {
	__u32 addr; /* network order */
	__u16 port;
	__u16 flags; /* MG_LB_CT_F_* */
	__u64 last_seen_ns;
};

/*
 * Egress gateways (egress.h).
 *
 * mg_egress: LPM trie, (source pod, destination prefix) -> route. The key's
 * prefixlen is 32 + the destination prefix length: the source matches
 * exactly, the destination by longest prefix. An excluded CIDR is a longer
 * prefix with MG_EGRESS_F_EXCLUDED. Gateways are node tunnel IPs; a flow
 * picks one by its hash and keeps it in mg_egress_ct while it stays listed.
 */
#define MG_EGRESS_MAX_GWS 16
#define MG_EGRESS_F_EXCLUDED 0x1
/*
 * A /32 route the DNS proxy wrote for a destinationFQDNs egress policy (an
 * address it answered for a name the policy selects); the policy's 16-bit
 * tag is in flags >> 16. The datapath treats it as any other route; the tag
 * tells its writer which routes are its own (the agent leaves them alone).
 */
#define MG_EGRESS_F_FQDN 0x2
#define MG_EGRESS_FQDN_TAG_SHIFT 16
/*
 * A route for from_mesh only, on a gateway node: traffic of this source that
 * another node steered here (for a destinationFQDNs policy, whose addresses
 * only the source node's DNS proxy saw) is SNATed with its index. from_pod
 * ignores it: it never steers by it.
 */
#define MG_EGRESS_F_GATEWAY_ONLY 0x4

struct mg_egress_key {
	__u32 prefixlen;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
};

struct mg_egress_value {
	__u32 flags;      /* MG_EGRESS_F_* */
	__u32 snat_index; /* 1..255 on a gateway of this route; 0: this node is not one */
	__u32 count;      /* gateways[0, count) are used */
	__u32 gateways[MG_EGRESS_MAX_GWS]; /* tunnel IPs, network order */
};

/* mg_egress_ct: LRU hash, forward 5-tuple (struct mg_ct_key) -> the flow's gateway. */
struct mg_egress_ct_value {
	__u32 gateway; /* tunnel IP, network order */
	__u32 pad;
	__u64 last_seen_ns;
};

/*
 * FQDN policy (toFQDNs).
 *
 * mg_fqdn: hash, (identity, world address) -> until when and on which ports
 * that identity may reach the address although its egress policy allows it
 * nothing there: the node's DNS proxy answered the address for a name that
 * identity's toFQDNs rules allow, and writes the entry (through the pins,
 * also while the agent is down) before it returns the answer. from_pod
 * consults it only when egress policy denied (MG_REASON_POLICY_EGRESS, not
 * an explicit deny) a packet to a world address. A flow whose own mg_ct
 * entry is live keeps passing after expires_ns (a connection outlasts the
 * name's TTL, as conntrack does); a new flow needs expires_ns > now.
 */
#define MG_FQDN_MAX_PORTS 8
#define MG_FQDN_F_ANY_PORT 0x1 /* any protocol, any port: ports[] unused */

struct mg_fqdn_key {
	__u32 identity;
	__u32 addr; /* network order */
};

/* proto 0: any protocol (on port, if port != 0); port 0: any port of proto. */
struct mg_fqdn_port {
	__u16 port; /* host order, as mg_policy_key.dport */
	__u8 proto;
	__u8 pad;
};

struct mg_fqdn_value {
	__u64 expires_ns; /* bpf_ktime_get_ns() clock (CLOCK_MONOTONIC) */
	__u32 flags;      /* MG_FQDN_F_* */
	__u32 nports;     /* ports[0, nports) are used */
	struct mg_fqdn_port ports[MG_FQDN_MAX_PORTS];
};

/* mg_events: ring buffer of these. */
struct mg_flow_event {
	__u64 ts_ns;
	__u32 saddr; /* network order */
	__u32 daddr; /* network order */
	__u32 src_identity;
	__u32 dst_identity;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 verdict; /* enum mg_verdict */
	__u8 reason;  /* enum mg_reason */
	__u8 point;   /* enum mg_point */
	__u32 ifindex;
	__u32 pad;
};

/* Sizes the Rust mirror (src/layout.rs) checks too. */
_Static_assert(sizeof(struct mg_ipcache_key) == 8, "mg_ipcache_key layout");
_Static_assert(sizeof(struct mg_ipcache_value) == 16, "mg_ipcache_value layout");
_Static_assert(sizeof(struct mg_policy_key) == 12, "mg_policy_key layout");
_Static_assert(sizeof(struct mg_policy_value) == 4, "mg_policy_value layout");
_Static_assert(sizeof(struct mg_policy_sel_value) == 4, "mg_policy_sel_value layout");
_Static_assert(sizeof(struct mg_ct_key) == 16, "mg_ct_key layout");
_Static_assert(sizeof(struct mg_ct_value) == 16, "mg_ct_value layout");
_Static_assert(sizeof(struct mg_counter) == 16, "mg_counter layout");
_Static_assert(sizeof(struct mg_config) == 12, "mg_config layout");
_Static_assert(sizeof(struct mg_mesh_cidr_value) == 4, "mg_mesh_cidr_value layout");
_Static_assert(sizeof(struct mg_flow_event) == 40, "mg_flow_event layout");
_Static_assert(sizeof(struct mg_lb_svc_key) == 8, "mg_lb_svc_key layout");
_Static_assert(sizeof(struct mg_lb_svc_value) == 12, "mg_lb_svc_value layout");
_Static_assert(sizeof(struct mg_lb_backend_key) == 8, "mg_lb_backend_key layout");
_Static_assert(sizeof(struct mg_lb_backend_value) == 8, "mg_lb_backend_value layout");
_Static_assert(sizeof(struct mg_lb_ct_value) == 16, "mg_lb_ct_value layout");
_Static_assert(sizeof(struct mg_egress_key) == 12, "mg_egress_key layout");
_Static_assert(sizeof(struct mg_egress_value) == 76, "mg_egress_value layout");
_Static_assert(sizeof(struct mg_egress_ct_value) == 16, "mg_egress_ct_value layout");
_Static_assert(sizeof(struct mg_fqdn_key) == 8, "mg_fqdn_key layout");
_Static_assert(sizeof(struct mg_fqdn_port) == 4, "mg_fqdn_port layout");
_Static_assert(sizeof(struct mg_fqdn_value) == 48, "mg_fqdn_value layout");

#endif
