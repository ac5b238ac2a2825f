//! The DNS proxy's parse-and-decide path on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    meshgate_egress::dnsproxy::fuzz::one(data);
});
