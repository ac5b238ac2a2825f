//! The compiled tc programs, embedded at build time.

/// The ELF object built by `build.rs` from `bpf/datapath.c` (clang, BTF included).
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"))
}
