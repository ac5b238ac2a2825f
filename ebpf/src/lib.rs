//! eBPF datapath: not built yet (see README.md).
