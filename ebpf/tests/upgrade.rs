//! Loading over the pins of an older build: `mg_config` (only ever what the
//! agent writes at start) is replaced when its layout changed; other maps
//! of another layout are still refused.

#![allow(clippy::unwrap_used)]

#[path = "support/world.rs"]
mod world;

use std::ffi::CString;
use std::path::Path;

use meshgate_ebpf::Datapath;
use world::{require_root, PinDir};

/// Creates an array map with `value_size`-byte values and pins it at `path`
/// (what an older build left), with the raw bpf syscall.
fn pin_array(path: &Path, value_size: u32) {
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: a valid attribute of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = ObjPin {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: a valid attribute; the path outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our own fd.
    unsafe { libc::close(fd as i32) };
}

#[test]
#[ignore = "needs root (bpf syscall, bpffs): cargo xtask test runs it"]
fn an_older_config_pin_is_replaced_and_other_mismatches_are_refused() {
    require_root();
    let pins = PinDir::new();
    let maps = pins.0.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    // mg_config as it was before the egress gateways (8-byte values).
    pin_array(&maps.join("mg_config"), 8);
    let mut dp =
        Datapath::load(&pins.0).unwrap_or_else(|e| panic!("loading over an old mg_config: {e}"));
    dp.maps
        .config
        .set_tunnel_ip(Some("100.64.0.7".parse().unwrap()))
        .unwrap();
    assert_eq!(
        dp.maps.config.tunnel_ip().unwrap(),
        Some("100.64.0.7".parse().unwrap())
    );
    drop(dp);
    // Any other map of another layout is still refused, naming it.
    let pins = PinDir::new();
    let maps = pins.0.join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    pin_array(&maps.join("mg_drops"), 8);
    let err = match Datapath::load(&pins.0) {
        Ok(_) => panic!("a mismatched mg_drops pin was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("mg_drops"), "{err}");
}
