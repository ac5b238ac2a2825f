// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
/*
 * meshgate tc programs, one per attach point:
 *
 *   mg_from_pod   ingress of a pod's host-side veth: source identity from the
 *                 ipcache into skb->mark, egress policy of the source (and
 *                 ingress policy of a local destination), conntrack.
 *   mg_to_mesh    egress of the VXLAN collect_md device: tunnel key with
 *                 VNI = source identity (from the mark) and remote = the
 *                 destination node's tunnel IP (from the ipcache).
 *   mg_from_mesh  ingress of the VXLAN device: VNI = source identity, ingress
 *                 policy of the destination endpoint, conntrack.
 *   mg_to_pod     egress of a pod's host-side veth: ingress policy of the pod
 *                 for what neither from_pod nor from_mesh judged (forwarded
 *                 from outside the mesh: world, or a CIDR identity), conntrack.
 *
 * Entities and CIDR rules: reserved identities are Cilium's (host 1, world
 * 2, remote-node 6, kube-apiserver 7). A world ipcache entry
 * (MG_IPCACHE_F_WORLD: a policy's CIDR prefix with its node-local CIDR
 * identity, or a kube-apiserver address) gives its identity to policy and
 * is a world address for everything else; it never applies inside a mesh
 * pod CIDR (ipcache_lookup). Traffic a remote node's own stack sends through
 * the mesh (VNI host) is remote-node here. ICMP is looked up in policy with
 * dport = MG_ICMP_TYPE_BASE + type (flow.policy_port).
 *
 * Service load balancing: from_pod translates a new TCP/UDP connection to a
 * service VIP:port to a backend chosen by affinity (mg_lb_svc,
 * mg_lb_backends) before policy and the ipcache lookup, so the backend's
 * identity is what policy sees; mg_lb_ct keeps the choice for the
 * connection and the VIP for its replies, whose source is translated back
 * on the way into the client pod (from_pod of a local backend's veth, or
 * from_mesh for a backend on another node). The maps and helpers are in lb.h.
 *
 * Egress gateways: from_pod marks allowed traffic to a world address that an
 * egress route selects (mg_egress) for its flow's gateway node (mg_egress_ct),
 * to_mesh tunnels it there, and the gateway's from_mesh marks it for the
 * agent's SNAT to the egress IP. The maps and helpers are in egress.h.
 *
 * FQDN policy: a packet to a world address that egress policy denies for
 * lack of a rule passes if the node's DNS proxy answered that address for a
 * name the source identity may reach (mg_fqdn, unexpired, port listed) or
 * if its flow is live in conntrack. With the DNS proxy flag in mg_config,
 * pod DNS (port 53) goes to the host stack without egress policy, for the
 * proxy's DNAT rule. The map and helpers are in fqdn.h.
 *
 * Every drop sets a reason (mg_datapath.h), is counted per reason in
 * mg_drops and sent as a flow event on mg_events. New allowed flows are
 * sent as flow events too.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "mg_datapath.h"

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct mg_ipcache_key);
	__type(value, struct mg_ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__type(key, struct mg_ipcache_key);
	__type(value, struct mg_mesh_cidr_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_mesh_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mg_policy_key);
	__type(value, struct mg_policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct mg_policy_sel_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_policy_sel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mg_ct_key);
	__type(value, struct mg_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MG_REASON_SLOTS);
	__type(key, __u32);
	__type(value, struct mg_counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mg_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_events SEC(".maps");

/* What a program learnt about a packet. */
struct flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 is_reply_type; /* ICMP echo reply: ports are swapped for conntrack */
	__u16 l4_off;       /* offset of the L4 header in the frame */
	__u16 policy_port;  /* dport for policy: the L4 port, ICMP: MG_ICMP_TYPE_BASE + type */
	__u16 pad;
	__u32 src_identity;
	__u32 dst_identity;
};

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct flow *f)
{
	struct iphdr ip;
	__u32 l4;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	f->saddr = ip.saddr;
	f->daddr = ip.daddr;
	f->proto = ip.protocol;
	f->sport = 0;
	f->dport = 0;
	f->is_reply_type = 0;
	f->l4_off = 0;
	f->policy_port = 0;
	/* Non-first fragments carry no L4 header: ports stay 0. */
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;
	l4 = ETH_HLEN + ip.ihl * 4;
	f->l4_off = l4;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return -1;
		f->sport = bpf_ntohs(ports[0]);
		f->dport = bpf_ntohs(ports[1]);
		f->policy_port = f->dport;
	} else if (ip.protocol == IPPROTO_ICMP) {
		__u8 hdr[6]; /* type, code, checksum, echo id */

		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
			return -1;
		f->policy_port = MG_ICMP_TYPE_BASE + hdr[0];
		if (hdr[0] == ICMP_ECHO) {
			f->sport = ((__u16)hdr[4] << 8) | hdr[5];
		} else if (hdr[0] == ICMP_ECHOREPLY) {
			f->dport = ((__u16)hdr[4] << 8) | hdr[5];
			f->is_reply_type = 1;
		}
	}
	return 0;
}

/* Is addr inside the pod CIDR of some cluster of the mesh? */
static __always_inline int in_mesh_cidr(__u32 addr)
{
	struct mg_ipcache_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&mg_mesh_cidrs, &key) != NULL;
}

/*
 * The ipcache entry of addr (longest prefix). A world entry (a policy's
 * CIDR prefix) found for an address inside a mesh pod CIDR does not count:
 * that address keeps the meaning it has without an entry.
 */
static __always_inline struct mg_ipcache_value *ipcache_lookup(__u32 addr)
{
	struct mg_ipcache_key key = { .prefixlen = 32, .addr = addr };
	struct mg_ipcache_value *v = bpf_map_lookup_elem(&mg_ipcache, &key);

	if (v && (v->flags & MG_IPCACHE_F_WORLD) && in_mesh_cidr(addr))
		return NULL;
	return v;
}

/* A world entry's identity for a world source, else world. */
static __always_inline __u32 world_identity(__u32 addr)
{
	struct mg_ipcache_value *v = ipcache_lookup(addr);

	if (v && (v->flags & MG_IPCACHE_F_WORLD))
		return v->identity & MG_IDENTITY_MASK;
	return MG_IDENTITY_WORLD;
}

static __always_inline void send_event(struct __sk_buff *skb, const struct flow *f, __u8 verdict,
				       __u8 reason, __u8 point)
{
	struct mg_flow_event *ev;

	ev = bpf_ringbuf_reserve(&mg_events, sizeof(*ev), 0);
	if (!ev) {
		__u32 idx = MG_SLOT_EVENTS_LOST;
		struct mg_counter *lost = bpf_map_lookup_elem(&mg_drops, &idx);

		if (lost)
			lost->packets += 1;
		return;
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->saddr = f->saddr;
	ev->daddr = f->daddr;
	ev->src_identity = f->src_identity;
	ev->dst_identity = f->dst_identity;
	ev->sport = f->sport;
	ev->dport = f->dport;
	ev->proto = f->proto;
	ev->verdict = verdict;
	ev->reason = reason;
	ev->point = point;
	ev->ifindex = skb->ifindex;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int drop(struct __sk_buff *skb, const struct flow *f, __u8 reason,
				__u8 point)
{
	__u32 idx = reason;
	struct mg_counter *c = bpf_map_lookup_elem(&mg_drops, &idx);

	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
	send_event(skb, f, MG_VERDICT_DENY, reason, point);
	return TC_ACT_SHOT;
}

static __always_inline __u32 policy_selected(__u32 identity, __u32 dir_flag)
{
	struct mg_policy_sel_value *sel = bpf_map_lookup_elem(&mg_policy_sel, &identity);

	return sel && (sel->flags & dir_flag);
}

/*
 * Policy of `local` towards `remote` in `direction` for (dport, proto):
 * a fixed number of hash lookups, whatever the number of rules. Returns a
 * drop reason, or MG_REASON_NONE when allowed.
 */
static __always_inline __u8 policy_check(__u32 local, __u32 remote, __u16 dport, __u8 proto,
					 __u8 direction)
{
	struct mg_policy_key k = { .local_identity = local, .direction = direction };
	struct mg_policy_value *v;
	__u32 sel_flag = direction == MG_DIR_EGRESS ? MG_SEL_EGRESS : MG_SEL_INGRESS;
	int allowed = 0;
	int i;

	/* (remote, port, proto) (remote, *, proto) (remote, *, *) then the same for any remote */
#pragma unroll
	for (i = 0; i < 6; i++) {
		k.remote_identity = i < 3 ? remote : 0;
		k.proto = (i % 3) == 2 ? 0 : proto;
		k.dport = (i % 3) == 0 ? dport : 0;
		if ((i % 3) == 0 && dport == 0)
			continue; /* same key as the next one */
		if (i >= 3 && remote == 0)
			break;
		v = bpf_map_lookup_elem(&mg_policy, &k);
		if (!v)
			continue;
		if (v->verdict == MG_VERDICT_DENY)
			return MG_REASON_POLICY_DENY;
		if (v->verdict == MG_VERDICT_ALLOW)
			allowed = 1;
	}
	if (allowed || !policy_selected(local, sel_flag))
		return MG_REASON_NONE;
	return direction == MG_DIR_EGRESS ? MG_REASON_POLICY_EGRESS : MG_REASON_POLICY_INGRESS;
}

static __always_inline void ct_key_forward(const struct flow *f, struct mg_ct_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = f->saddr;
	k->daddr = f->daddr;
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
}

/* Is this packet a reply (or a later packet) of a flow allowed in the other direction? */
static __always_inline int ct_is_reply(const struct flow *f, __u64 now)
{
	struct mg_ct_key k;
	struct mg_ct_value *v;

	__builtin_memset(&k, 0, sizeof(k));
	k.saddr = f->daddr;
	k.daddr = f->saddr;
	k.sport = f->dport;
	k.dport = f->sport;
	k.proto = f->proto;
	v = bpf_map_lookup_elem(&mg_ct, &k);
	if (!v || now - v->last_seen_ns > MG_CT_LIFETIME_NS)
		return 0;
	v->last_seen_ns = now;
	__sync_fetch_and_add(&v->packets, 1);
	return 1;
}

/* Records an allowed flow; returns 1 if it is new. */
static __always_inline int ct_track(const struct flow *f, __u64 now)
{
	struct mg_ct_key k;
	struct mg_ct_value *v;
	struct mg_ct_value nv = { .last_seen_ns = now, .packets = 1 };

	ct_key_forward(f, &k);
	v = bpf_map_lookup_elem(&mg_ct, &k);
	if (v) {
		int expired = now - v->last_seen_ns > MG_CT_LIFETIME_NS;

		v->last_seen_ns = now;
		__sync_fetch_and_add(&v->packets, 1);
		return expired;
	}
	bpf_map_update_elem(&mg_ct, &k, &nv, BPF_ANY);
	return 1;
}

#include "lb.h"

static __always_inline struct mg_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mg_config, &zero);
}

/* Strict mode: would this packet leave by an interface other than the mesh device? */
static __always_inline int leaves_unencrypted(struct __sk_buff *skb, const struct flow *f,
					      __u32 mesh_ifindex)
{
	struct bpf_fib_lookup fib;
	long rc;

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = f->proto;
	fib.tot_len = skb->len - ETH_HLEN;
	fib.ipv4_src = f->saddr;
	fib.ipv4_dst = f->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return 1;
	return fib.ifindex != mesh_ifindex;
}

#include "egress.h"
#include "fqdn.h"

SEC("classifier")
int mg_from_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	struct mg_ipcache_value *src, *dst;
	struct mg_config *cfg;
	struct mg_lb_ct_value rv = {};
	int reverse = 0, steered;
	__u32 daddr;
	__u64 now;
	__u8 reason;

	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return drop(skb, &f, MG_REASON_IPV6, MG_POINT_FROM_POD);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &f) < 0)
		return drop(skb, &f, MG_REASON_MALFORMED, MG_POINT_FROM_POD);

	src = ipcache_lookup(f.saddr);
	if (!src || !(src->flags & MG_IPCACHE_F_LOCAL))
		return drop(skb, &f, MG_REASON_UNKNOWN_SOURCE, MG_POINT_FROM_POD);
	f.src_identity = src->identity & MG_IDENTITY_MASK;
	if (src->ifindex && src->ifindex != skb->ingress_ifindex)
		return drop(skb, &f, MG_REASON_SOURCE_SPOOFED, MG_POINT_FROM_POD);

	/* Service VIP -> backend first: policy and routing see the backend. */
	now = bpf_ktime_get_ns();
	daddr = f.daddr;
	reason = lb_forward(skb, &f, now);
	if (reason)
		return drop(skb, &f, reason, MG_POINT_FROM_POD);
	if (f.daddr == daddr)
		reverse = lb_reverse_lookup(&f, now, &rv);

	dst = ipcache_lookup(f.daddr);
	f.dst_identity = dst ? dst->identity & MG_IDENTITY_MASK : MG_IDENTITY_WORLD;
	skb->mark = MG_MARK_MAGIC | f.src_identity;

	/*
	 * Strict mode guards every mesh address that is not a local pod: a
	 * remote pod the ipcache knows, and any address inside any cluster's
	 * pod CIDR (a departed pod, a stale backend, a pod not learnt yet).
	 */
	cfg = config();
	if (cfg && (cfg->flags & MG_CFG_F_STRICT) && !(dst && (dst->flags & MG_IPCACHE_F_LOCAL)) &&
	    ((dst && dst->tunnel_ip) || in_mesh_cidr(f.daddr)) &&
	    leaves_unencrypted(skb, &f, cfg->mesh_ifindex))
		return drop(skb, &f, MG_REASON_STRICT_UNENCRYPTED, MG_POINT_FROM_POD);

	if (ct_is_reply(&f, now))
		return lb_pass(skb, &f, reverse, &rv, MG_POINT_FROM_POD);

	/*
	 * DNS for the node's proxy: no egress policy (the proxy judges the
	 * query) and no steering (the mark must stay for its DNAT rule).
	 */
	steered = dns_steered(cfg, &f, daddr, reverse);
	if (!steered) {
		reason = policy_check(f.src_identity, f.dst_identity, f.policy_port, f.proto,
				      MG_DIR_EGRESS);
		/*
		 * Denied to the world for lack of a rule (not by a deny
		 * rule): an answer of the DNS proxy may admit it.
		 */
		if (reason == MG_REASON_POLICY_EGRESS && is_world(dst, f.daddr) &&
		    fqdn_allows(&f, now))
			reason = MG_REASON_NONE;
		if (reason)
			return drop(skb, &f, reason, MG_POINT_FROM_POD);
	}
	/*
	 * A local destination gets no from_mesh pass: apply its ingress policy
	 * here (DNS too: should the proxy's DNAT be missing, the pod is still
	 * protected as a remote one is by its node's from_mesh).
	 */
	if (dst && (dst->flags & MG_IPCACHE_F_LOCAL)) {
		reason = policy_check(f.dst_identity, f.src_identity, f.policy_port, f.proto,
				      MG_DIR_INGRESS);
		if (reason)
			return drop(skb, &f, reason, MG_POINT_FROM_POD);
	}
	/* Allowed traffic to the world that an egress route selects goes to its gateway. */
	if (!steered && is_world(dst, f.daddr)) {
		reason = egress_steer(skb, &f, now);
		if (reason)
			return drop(skb, &f, reason, MG_POINT_FROM_POD);
	}
	if (!f.is_reply_type && ct_track(&f, now))
		send_event(skb, &f, MG_VERDICT_ALLOW, MG_REASON_NONE, MG_POINT_FROM_POD);
	return lb_pass(skb, &f, reverse, &rv, MG_POINT_FROM_POD);
}

SEC("classifier")
int mg_to_mesh(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key;
	struct flow f = {};
	struct mg_ipcache_value *src, *dst;
	__u32 mark = skb->mark;
	__u32 remote;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK; /* collect_md drops what has no tunnel key */
	if (parse_ipv4(skb, &f) < 0)
		return drop(skb, &f, MG_REASON_MALFORMED, MG_POINT_TO_MESH);

	if ((mark & MG_MARK_MAGIC_MASK) == MG_MARK_EGRESS) {
		/* Egress gateway traffic: to the gateway from_pod chose for the flow. */
		f.src_identity = mark & MG_IDENTITY_MASK;
		f.dst_identity = MG_IDENTITY_WORLD;
		remote = egress_gateway(&f);
		if (!remote)
			return drop(skb, &f, MG_REASON_NO_EGRESS_GATEWAY, MG_POINT_TO_MESH);
	} else {
		if ((mark & MG_MARK_MAGIC_MASK) == MG_MARK_MAGIC) {
			f.src_identity = mark & MG_IDENTITY_MASK;
		} else {
			/*
			 * Not from a pod's veth: identity from the ipcache, else the
			 * node itself, or the world if forwarded (a reply from the
			 * internet de-SNATed on an egress gateway); a world entry's
			 * identity is this node's, so the world it is.
			 */
			src = ipcache_lookup(f.saddr);
			if (src && !(src->flags & MG_IPCACHE_F_WORLD))
				f.src_identity = src->identity & MG_IDENTITY_MASK;
			else if (skb->ingress_ifindex)
				f.src_identity = MG_IDENTITY_WORLD; /* CIDR identities are node-local */
			else
				f.src_identity = MG_IDENTITY_HOST;
		}
		dst = ipcache_lookup(f.daddr);
		if (!dst || !dst->tunnel_ip)
			return drop(skb, &f, MG_REASON_NO_TUNNEL_ENDPOINT, MG_POINT_TO_MESH);
		f.dst_identity = dst->identity & MG_IDENTITY_MASK;
		remote = dst->tunnel_ip;
	}

	__builtin_memset(&key, 0, sizeof(key));
	key.tunnel_id = f.src_identity;
	key.remote_ipv4 = bpf_ntohl(remote); /* the helper takes host order */
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(skb, &f, MG_REASON_SET_TUNNEL_KEY, MG_POINT_TO_MESH);
	/*
	 * The device routes the encapsulated packet with this mark: the egress
	 * mark's ip rule would send it back into the mesh device.
	 */
	if ((mark & MG_MARK_MAGIC_MASK) == MG_MARK_EGRESS)
		skb->mark = MG_MARK_MAGIC | f.src_identity;
	return TC_ACT_OK;
}

SEC("classifier")
int mg_from_mesh(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key;
	struct flow f = {};
	struct mg_ipcache_value *dst;
	struct mg_lb_ct_value rv = {};
	__u32 snat_index;
	int reverse;
	__u64 now;
	__u8 reason;

	if (skb->protocol == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return drop(skb, &f, MG_REASON_IPV6, MG_POINT_FROM_MESH);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (parse_ipv4(skb, &f) < 0)
		return drop(skb, &f, MG_REASON_MALFORMED, MG_POINT_FROM_MESH);

	__builtin_memset(&key, 0, sizeof(key));
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return drop(skb, &f, MG_REASON_NO_TUNNEL_KEY, MG_POINT_FROM_MESH);
	/*
	 * The sender's identity is the VNI, never looked up from the source
	 * address: the sending node's own stack is remote-node here, and the
	 * world it forwards gets this node's CIDR identity of its source.
	 */
	f.src_identity = key.tunnel_id & MG_IDENTITY_MASK;
	if (f.src_identity == MG_IDENTITY_HOST)
		f.src_identity = MG_IDENTITY_REMOTE_NODE;
	else if (f.src_identity == MG_IDENTITY_WORLD)
		f.src_identity = world_identity(f.saddr);

	now = bpf_ktime_get_ns();
	dst = ipcache_lookup(f.daddr);
	if (!dst || !(dst->flags & MG_IPCACHE_F_LOCAL)) {
		if (!is_world(dst, f.daddr))
			return drop(skb, &f, MG_REASON_UNKNOWN_DESTINATION, MG_POINT_FROM_MESH);
		/* Egress gateway traffic for this node: marked for the agent's SNAT. */
		f.dst_identity = MG_IDENTITY_WORLD;
		snat_index = egress_snat_index(&f);
		if (!snat_index)
			return drop(skb, &f, MG_REASON_EGRESS_NOT_GATEWAY, MG_POINT_FROM_MESH);
		skb->mark = MG_MARK_SNAT | snat_index;
		if (!f.is_reply_type && ct_track(&f, now))
			send_event(skb, &f, MG_VERDICT_ALLOW, MG_REASON_NONE, MG_POINT_FROM_MESH);
		bpf_skb_change_type(skb, PACKET_HOST);
		return TC_ACT_OK;
	}
	f.dst_identity = dst->identity & MG_IDENTITY_MASK;
	skb->mark = MG_MARK_MAGIC | f.src_identity;

	if (!ct_is_reply(&f, now)) {
		reason = policy_check(f.dst_identity, f.src_identity, f.policy_port, f.proto,
				      MG_DIR_INGRESS);
		if (reason)
			return drop(skb, &f, reason, MG_POINT_FROM_MESH);
		if (!f.is_reply_type && ct_track(&f, now))
			send_event(skb, &f, MG_VERDICT_ALLOW, MG_REASON_NONE, MG_POINT_FROM_MESH);
	}
	/*
	 * The mesh device does not resolve neighbours (NOARP): frames carry the
	 * sender device's address. They are for this host.
	 */
	bpf_skb_change_type(skb, PACKET_HOST);
	/* A reply of a backend on another node to a client here: source back to the VIP. */
	reverse = lb_reverse_lookup(&f, now, &rv);
	return lb_pass(skb, &f, reverse, &rv, MG_POINT_FROM_MESH);
}

/*
 * Egress of a pod's host-side veth: what reaches the pod without passing
 * from_pod or from_mesh (both mark what they judged MG_MARK_MAGIC |
 * identity): a packet forwarded from outside the mesh (the world, a CIDR
 * identity by its source) is judged by the pod's ingress policy here. The
 * node's own stack (kubelet probes, the DNS proxy's answers; ingress
 * ifindex 0) passes, as Cilium allows the local host by default.
 */
SEC("classifier")
int mg_to_pod(struct __sk_buff *skb)
{
	struct flow f = {};
	struct mg_ipcache_value *dst;
	__u64 now;
	__u8 reason;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if ((skb->mark & MG_MARK_MAGIC_MASK) == MG_MARK_MAGIC || !skb->ingress_ifindex)
		return TC_ACT_OK;
	if (parse_ipv4(skb, &f) < 0)
		return drop(skb, &f, MG_REASON_MALFORMED, MG_POINT_TO_POD);
	dst = ipcache_lookup(f.daddr);
	if (!dst || !(dst->flags & MG_IPCACHE_F_LOCAL))
		return TC_ACT_OK; /* not a pod with an identity: nothing selects it */
	f.dst_identity = dst->identity & MG_IDENTITY_MASK;
	/* Not through the mesh: never a mesh identity, whatever the source says. */
	f.src_identity = world_identity(f.saddr);
	now = bpf_ktime_get_ns();
	if (ct_is_reply(&f, now))
		return TC_ACT_OK;
	reason = policy_check(f.dst_identity, f.src_identity, f.policy_port, f.proto,
			      MG_DIR_INGRESS);
	if (reason)
		return drop(skb, &f, reason, MG_POINT_TO_POD);
	if (!f.is_reply_type && ct_track(&f, now))
		send_event(skb, &f, MG_VERDICT_ALLOW, MG_REASON_NONE, MG_POINT_TO_POD);
	return TC_ACT_OK;
}
