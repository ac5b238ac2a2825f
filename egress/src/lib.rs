//! Egress gateway and FQDN policy: not built yet (see README.md).
