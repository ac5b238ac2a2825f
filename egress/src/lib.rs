//! meshgate egress gateways, policy half (pure: no root, no I/O besides
//! reading a policy file).
//!
//! - [`EgressPolicy`] and its parts (`policy.rs`):
//!   `CiliumEgressGatewayPolicy` (cilium.io/v2) as plain types, parsed by
//!   [`parse_document`] (`cegp.rs`) as Cilium writes it; what is not known or
//!   not supported is refused with the field's path ([`ParseError`]).
//! - [`parse_policy_text`] / [`parse_policy_file`]: one reader for policy
//!   files mixing identity policies (`NetworkPolicy`,
//!   `CiliumNetworkPolicy`, read by `meshgate_model::policy`) and
//!   egress gateway policies ([`PolicyFile`]).
//! - [`gateways`]: the planner — policies, endpoints, nodes and gateway
//!   health in; this node's routes, SNAT addresses and status out
//!   ([`plan`], [`EgressPlan`]).
//! - [`summary`]: one line per policy for `meshgate policy check`.
//! - [`fqdn`]: `matchName` / `matchPattern` matching ([`fqdn::NameMatch`]);
//!   [`dns_policy`]: the DNS proxy's view of identity policies
//!   ([`identity_dns`]: `toFQDNs` and `rules.dns` per local identity);
//!   [`dnsproxy`]: the proxy itself and its policy file
//!   ([`dnsproxy::state`]).
//!
//! The rest of the egress feature lives elsewhere: the eBPF side in
//! `ebpf/` (maps `mg_egress`, the routes, and `mg_egress_ct`, the
//! connection tracking that keeps a flow on its gateway), and the agent
//! wiring that gathers the views, calls [`plan`] and writes the maps in
//! `gateway/agent/src/datapath/egress.rs`. FQDN destinations
//! (`destinationFQDNs`) are planned here ([`EgressPlan::fqdn`]); the DNS
//! proxy turns their answers into routes.

mod cegp;
mod describe;
pub mod dns_policy;
pub mod dnsproxy;
mod error;
mod fields;
mod file;
pub mod fqdn;
pub mod gateways;
mod policy;

#[cfg(test)]
mod cegp_tests;
#[cfg(test)]
mod dns_policy_tests;
#[cfg(test)]
mod fqdn_tests;
#[cfg(test)]
mod gateways_fqdn_tests;
#[cfg(test)]
mod gateways_tests;
#[cfg(test)]
mod testworld;

pub use cegp::{parse_document, API_VERSION};
pub use describe::summary;
pub use dns_policy::identity_dns;
pub use error::ParseError;
pub use file::{
    parse_policy_file, parse_policy_file_report, parse_policy_text, parse_policy_text_report,
    FileReport, PolicyFile,
};
pub use gateways::{
    fqdn_tag, plan, EgressGatewayStatus, EgressPlan, EgressPolicyStatus, EndpointView, FqdnRoutes,
    NodeAddress, NodeView, Route, MAX_GATEWAYS,
};
pub use policy::{Destinations, EgressIpSource, EgressPolicy, EndpointSelector, GatewaySpec};
