/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Service load balancing for the tc programs: the mg_lb_* maps and the
 * helpers from_pod and from_mesh call. Not a standalone header: datapath.c
 * includes it after its own helpers (struct flow, drop, ct_key_forward),
 * which these use. Layouts are in mg_datapath.h.
 */
#ifndef MG_LB_H
#define MG_LB_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct mg_lb_svc_key);
	__type(value, struct mg_lb_svc_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_lb_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mg_lb_backend_key);
	__type(value, struct mg_lb_backend_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mg_ct_key);
	__type(value, struct mg_lb_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_lb_ct SEC(".maps");

/* Offsets in the IPv4 header. */
#define IP_CSUM_OFF (ETH_HLEN + 10)
#define IP_SADDR_OFF (ETH_HLEN + 12)
#define IP_DADDR_OFF (ETH_HLEN + 16)

static __always_inline int is_tcp_udp(const struct flow *f)
{
	return (f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) && f->l4_off;
}

/*
 * Rewrites the source (is_src) or destination address and port of a TCP or
 * UDP packet, with the IPv4 and L4 checksums (the address is in the L4
 * pseudo header). A UDP checksum of 0 (none) stays 0.
 */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct flow *f, int is_src,
				       __u32 old_addr, __u32 new_addr, __u16 old_port,
				       __u16 new_port)
{
	__u32 csum_off = f->l4_off + (f->proto == IPPROTO_TCP ? 16 : 6);
	__u32 port_off = f->l4_off + (is_src ? 0 : 2);
	__u64 mangled = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u16 op = bpf_htons(old_port), np = bpf_htons(new_port);

	if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr,
				BPF_F_PSEUDO_HDR | mangled | sizeof(__u32)) < 0)
		return -1;
	if (op != np) {
		if (bpf_l4_csum_replace(skb, csum_off, op, np, mangled | sizeof(__u16)) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &np, sizeof(np), 0) < 0)
			return -1;
	}
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(__u32)) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, is_src ? IP_SADDR_OFF : IP_DADDR_OFF, &new_addr,
				sizeof(new_addr), 0) < 0)
		return -1;
	return 0;
}

/*
 * A backend of the service by affinity: `local` takes slots of this
 * cluster while there are any, else the others; `remote` the reverse;
 * `none` all. Random per new connection.
 */
static __always_inline int lb_pick(const struct mg_lb_svc_value *svc,
				   struct mg_lb_backend_value *out)
{
	struct mg_lb_backend_key k = { .rev = svc->rev };
	struct mg_lb_backend_value *b;
	__u32 count = svc->count, local = svc->local_count, lo = 0, n = count, remote;

	if (local > count)
		local = count;
	remote = count - local;
	if (svc->affinity == MG_LB_AFFINITY_LOCAL) {
		if (local) {
			n = local;
		} else {
			lo = local;
			n = remote;
		}
	} else if (svc->affinity == MG_LB_AFFINITY_REMOTE) {
		if (remote) {
			lo = local;
			n = remote;
		} else {
			n = local;
		}
	}
	if (n == 0)
		return -1;
	k.slot = lo + bpf_get_prandom_u32() % n;
	b = bpf_map_lookup_elem(&mg_lb_backends, &k);
	if (!b)
		return -1;
	*out = *b;
	return 0;
}

/*
 * from_pod: a packet to a service VIP:port goes to the backend its
 * connection was given (a new connection gets one now). `f` then names the
 * backend. Returns a drop reason or MG_REASON_NONE.
 */
static __always_inline __u8 lb_forward(struct __sk_buff *skb, struct flow *f, __u64 now)
{
	struct mg_ct_key k;
	struct mg_lb_ct_value *ct, nv = {};
	struct mg_lb_svc_key sk = {};
	struct mg_lb_svc_value *svc;
	struct mg_lb_backend_value be = {};

	if (!is_tcp_udp(f) || !f->dport)
		return MG_REASON_NONE;
	ct_key_forward(f, &k);
	ct = bpf_map_lookup_elem(&mg_lb_ct, &k);
	/*
	 * A TCP SYN opens a new connection: it picks again even if an entry of
	 * an earlier connection with the same ports is still there (port reuse),
	 * which may name a backend that has left since.
	 */
	if (ct && f->proto == IPPROTO_TCP) {
		__u8 flags;

		if (bpf_skb_load_bytes(skb, f->l4_off + 13, &flags, 1) < 0)
			return MG_REASON_MALFORMED;
		if ((flags & TCP_FLAG_SYN) && !(flags & TCP_FLAG_ACK))
			ct = NULL;
	}
	if (ct && !(ct->flags & MG_LB_CT_F_REVERSE) && now - ct->last_seen_ns <= MG_CT_LIFETIME_NS) {
		ct->last_seen_ns = now;
		be.addr = ct->addr;
		be.port = ct->port;
	} else {
		sk.vip = f->daddr;
		sk.port = f->dport;
		sk.proto = f->proto;
		svc = bpf_map_lookup_elem(&mg_lb_svc, &sk);
		if (!svc)
			return MG_REASON_NONE;
		if (lb_pick(svc, &be) < 0)
			return MG_REASON_NO_SERVICE_BACKEND;
		nv.addr = be.addr;
		nv.port = be.port;
		nv.last_seen_ns = now;
		bpf_map_update_elem(&mg_lb_ct, &k, &nv, BPF_ANY);
		/* The reply as it will come: backend -> client, source back to the VIP. */
		k.saddr = be.addr;
		k.daddr = f->saddr;
		k.sport = be.port;
		k.dport = f->sport;
		nv.addr = f->daddr;
		nv.port = f->dport;
		nv.flags = MG_LB_CT_F_REVERSE;
		bpf_map_update_elem(&mg_lb_ct, &k, &nv, BPF_ANY);
	}
	if (nat_rewrite(skb, f, 0, f->daddr, be.addr, f->dport, be.port) < 0)
		return MG_REASON_MALFORMED;
	f->daddr = be.addr;
	f->dport = be.port;
	f->policy_port = be.port; /* TCP/UDP only: policy judges the backend port */
	return MG_REASON_NONE;
}

/* Is this a reply of a backend to a client of this node? Gives the VIP:port. */
static __always_inline int lb_reverse_lookup(const struct flow *f, __u64 now,
					     struct mg_lb_ct_value *out)
{
	struct mg_ct_key k;
	struct mg_lb_ct_value *v;

	if (!is_tcp_udp(f))
		return 0;
	ct_key_forward(f, &k);
	v = bpf_map_lookup_elem(&mg_lb_ct, &k);
	if (!v || !(v->flags & MG_LB_CT_F_REVERSE) || now - v->last_seen_ns > MG_CT_LIFETIME_NS)
		return 0;
	v->last_seen_ns = now;
	*out = *v;
	return 1;
}

/* Lets a packet pass, its source translated back to the VIP if it is a service reply. */
static __always_inline int lb_pass(struct __sk_buff *skb, const struct flow *f, int reverse,
				   const struct mg_lb_ct_value *rv, __u8 point)
{
	if (reverse && nat_rewrite(skb, f, 1, f->saddr, rv->addr, f->sport, rv->port) < 0)
		return drop(skb, f, MG_REASON_MALFORMED, point);
	return TC_ACT_OK;
}

#endif
