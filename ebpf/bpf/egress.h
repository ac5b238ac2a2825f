/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * Egress gateways for the tc programs: the mg_egress* maps and the helpers
 * from_pod, to_mesh and from_mesh call. Not a standalone header: datapath.c
 * includes it after its own helpers (struct flow, ct_key_forward, config),
 * which these use. Layouts are in mg_datapath.h; the agent writes the routes
 * (src/maps/egress.rs) and does the SNAT and the routing by mark (nftables,
 * ip rules):
 *
 *   source node   from_pod: a world destination with a route picks a gateway
 *                 (kept per flow in mg_egress_ct) and marks the packet
 *                 MG_MARK_EGRESS | identity, which the agent's ip rule routes
 *                 into the mesh device; to_mesh sends it to the gateway. If
 *                 the gateway is this node, the mark is MG_MARK_SNAT | index.
 *   gateway node  from_mesh: a world destination with a route of this node
 *                 (snat_index != 0) is marked MG_MARK_SNAT | index, which the
 *                 agent's ip rule and nft rule send out SNATed to the egress IP.
 *                 Replies are de-SNATed by the kernel and go back through
 *                 to_mesh with identity WORLD.
 */
#ifndef MG_EGRESS_H
#define MG_EGRESS_H

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct mg_egress_key);
	__type(value, struct mg_egress_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mg_ct_key);
	__type(value, struct mg_egress_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_egress_ct SEC(".maps");

/* The route of (saddr, daddr), if it is egress gateway traffic (not excluded). */
static __always_inline struct mg_egress_value *egress_route(__u32 saddr, __u32 daddr)
{
	struct mg_egress_key key = { .prefixlen = 64, .saddr = saddr, .daddr = daddr };
	struct mg_egress_value *route = bpf_map_lookup_elem(&mg_egress, &key);

	if (!route || (route->flags & (MG_EGRESS_F_EXCLUDED | MG_EGRESS_F_GATEWAY_ONLY)))
		return NULL;
	return route;
}

/*
 * A world address: no ipcache entry, or a world entry (a policy's CIDR
 * prefix, which ipcache_lookup never returns inside a mesh pod CIDR), and
 * outside every cluster's pod CIDR.
 */
static __always_inline int is_world(const struct mg_ipcache_value *dst, __u32 daddr)
{
	return (!dst || (dst->flags & MG_IPCACHE_F_WORLD)) && !in_mesh_cidr(daddr);
}

/* Is gw among the route's gateways[0, count)? */
static __always_inline int egress_listed(const struct mg_egress_value *route, __u32 gw)
{
	__u32 count = route->count;
	int i;

	for (i = 0; i < MG_EGRESS_MAX_GWS; i++) {
		if (i >= count)
			break;
		if (route->gateways[i] == gw)
			return 1;
	}
	return 0;
}

/*
 * from_pod, for an allowed packet to a world address: steers it to its
 * flow's gateway if an egress route selects it. The flow keeps its gateway
 * while the route still lists it; a new flow (or one whose gateway left)
 * picks slot hash % count, so it picks the same for the same list. Sets
 * skb->mark; returns a drop reason or MG_REASON_NONE.
 */
static __always_inline __u8 egress_steer(struct __sk_buff *skb, const struct flow *f, __u64 now)
{
	struct mg_egress_value *route = egress_route(f->saddr, f->daddr);
	struct mg_egress_ct_value *ct, nv = {};
	struct mg_config *cfg;
	struct mg_ct_key k;
	__u32 count, slot, gw;

	if (!route)
		return MG_REASON_NONE;
	ct_key_forward(f, &k);
	ct = bpf_map_lookup_elem(&mg_egress_ct, &k);
	if (ct && egress_listed(route, ct->gateway)) {
		ct->last_seen_ns = now;
		gw = ct->gateway;
	} else {
		count = route->count;
		if (count == 0 || count > MG_EGRESS_MAX_GWS)
			return MG_REASON_NO_EGRESS_GATEWAY;
		slot = bpf_get_hash_recalc(skb) % count;
		/* Keep the bound for the verifier, whatever the compiler knows. */
		barrier_var(slot);
		if (slot >= MG_EGRESS_MAX_GWS)
			return MG_REASON_NO_EGRESS_GATEWAY;
		gw = route->gateways[slot];
		nv.gateway = gw;
		nv.last_seen_ns = now;
		bpf_map_update_elem(&mg_egress_ct, &k, &nv, BPF_ANY);
	}
	cfg = config();
	if (cfg && cfg->tunnel_ip && gw == cfg->tunnel_ip) {
		/* This node is the gateway: SNAT here, never leave with the pod's address. */
		if (route->snat_index == 0 || route->snat_index > MG_MARK_SNAT_INDEX_MASK)
			return MG_REASON_NO_EGRESS_GATEWAY;
		skb->mark = MG_MARK_SNAT | route->snat_index;
	} else {
		skb->mark = MG_MARK_EGRESS | f->src_identity;
	}
	return MG_REASON_NONE;
}

/* to_mesh: the gateway from_pod chose for this packet's flow; 0 if none. */
static __always_inline __u32 egress_gateway(const struct flow *f)
{
	struct mg_egress_ct_value *ct;
	struct mg_ct_key k;

	ct_key_forward(f, &k);
	ct = bpf_map_lookup_elem(&mg_egress_ct, &k);
	return ct ? ct->gateway : 0;
}

/*
 * from_mesh: the SNAT index of this node for a world destination it is an
 * egress gateway of (for this source), or 0.
 */
static __always_inline __u32 egress_snat_index(const struct flow *f)
{
	struct mg_egress_key key = { .prefixlen = 64, .saddr = f->saddr, .daddr = f->daddr };
	struct mg_egress_value *route = bpf_map_lookup_elem(&mg_egress, &key);

	/* Gateway-only routes count here: they exist for this lookup. */
	if (!route || (route->flags & MG_EGRESS_F_EXCLUDED) ||
	    route->snat_index > MG_MARK_SNAT_INDEX_MASK)
		return 0;
	return route->snat_index;
}

#endif
