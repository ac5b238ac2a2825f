/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * FQDN policy and DNS steering for from_pod: the mg_fqdn map and the
 * helpers. Not a standalone header: datapath.c includes it after its own
 * helpers (struct flow, ct_key_forward, config), which these use. Layouts
 * are in mg_datapath.h; the node's DNS proxy writes mg_fqdn and sets
 * MG_CFG_F_DNS_PROXY (src/maps/fqdn.rs, src/maps/config.rs):
 *
 *   DNS           with MG_CFG_F_DNS_PROXY, a pod's UDP/TCP packet to port 53
 *                 skips the source's egress policy and egress gateway
 *                 steering (dns_steered); the proxy's nft rule DNATs it by
 *                 its mark, the proxy enforces DNS policy and, for each
 *                 answer a toFQDNs rule allows, writes mg_fqdn.
 *   toFQDNs       a packet to a world address that egress policy denied
 *                 (not by an explicit deny) passes if mg_fqdn allows it to
 *                 the source identity, or if its flow is live in mg_ct
 *                 (fqdn_allows).
 */
#ifndef MG_FQDN_H
#define MG_FQDN_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct mg_fqdn_key);
	__type(value, struct mg_fqdn_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mg_fqdn SEC(".maps");

/* Does one of the entry's (proto, port) pairs admit this packet? */
static __always_inline int fqdn_port_match(const struct mg_fqdn_value *v, const struct flow *f)
{
	__u32 nports = v->nports;
	int i;

	if (v->flags & MG_FQDN_F_ANY_PORT)
		return 1;
	for (i = 0; i < MG_FQDN_MAX_PORTS; i++) {
		if (i >= nports)
			break;
		if ((v->ports[i].proto == 0 || v->ports[i].proto == f->proto) &&
		    (v->ports[i].port == 0 || v->ports[i].port == f->policy_port))
			return 1;
	}
	return 0;
}

/*
 * A packet to a world address that the source's egress policy denies: does
 * a DNS answer admit it? Yes if the flow is already tracked and live (it
 * was admitted earlier; a connection outlasts the name's expiry), or if
 * mg_fqdn admits (source identity, destination) now on this port.
 */
static __always_inline int fqdn_allows(const struct flow *f, __u64 now)
{
	struct mg_fqdn_key key = { .identity = f->src_identity, .addr = f->daddr };
	struct mg_fqdn_value *v;
	struct mg_ct_value *ct;
	struct mg_ct_key k;

	ct_key_forward(f, &k);
	ct = bpf_map_lookup_elem(&mg_ct, &k);
	if (ct && now - ct->last_seen_ns <= MG_CT_LIFETIME_NS)
		return 1;
	v = bpf_map_lookup_elem(&mg_fqdn, &key);
	if (!v || v->expires_ns <= now)
		return 0;
	return fqdn_port_match(v, f);
}

/*
 * Is this a DNS query for the node's DNS proxy? UDP or TCP to port 53 with
 * the proxy flag set, and not a packet the load balancer translated (the
 * proxy could not answer for the VIP: its reply would not be translated
 * back) or the reply of a translated connection.
 */
static __always_inline int dns_steered(const struct mg_config *cfg, const struct flow *f,
				       __u32 daddr_sent, int lb_reply)
{
	if (!cfg || !(cfg->flags & MG_CFG_F_DNS_PROXY))
		return 0;
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
		return 0;
	return f->dport == 53 && f->l4_off && f->daddr == daddr_sent && !lb_reply;
}

#endif
