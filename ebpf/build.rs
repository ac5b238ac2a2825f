//! Compiles the tc programs in `bpf/` with clang into `$OUT_DIR/datapath.o`,
//! which `src/object.rs` embeds.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &[
    "bpf/datapath.c",
    "bpf/mg_datapath.h",
    "bpf/lb.h",
    "bpf/egress.h",
    "bpf/fqdn.h",
];
const FIX: &str = "install the Debian packages clang, libbpf-dev and linux-libc-dev \
                   (`cargo xtask deps` does this) or set CLANG to a clang that targets bpf";

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    if let Err(message) = build() {
        // A build script's panic message is what cargo shows the user.
        panic!("\n\nmeshgate-ebpf: {message}\n\n");
    }
}

fn build() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    match Command::new(&clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Err(format!("`{clang} --version` failed ({}); {FIX}", o.status)),
        Err(e) => {
            return Err(format!(
                "cannot run `{clang}` ({e}): the eBPF programs are compiled with clang; {FIX}"
            ))
        }
    }

    let include = Path::new("/usr/include");
    let multiarch = multiarch_include(include);
    let required = [
        ("linux/bpf.h", "linux-libc-dev", vec![include.to_path_buf()]),
        (
            "asm/types.h",
            "linux-libc-dev",
            vec![include.to_path_buf(), multiarch.clone()],
        ),
        (
            "bpf/bpf_helpers.h",
            "libbpf-dev",
            vec![include.to_path_buf()],
        ),
    ];
    for (header, package, dirs) in &required {
        if !dirs.iter().any(|dir| dir.join(header).is_file()) {
            return Err(format!(
                "the header <{header}> is missing (looked in {}): it comes from the Debian \
                 package {package}; {FIX}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    let object = out.join("datapath.o");
    let output = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I")
        .arg(&multiarch)
        .arg("-I")
        .arg(manifest.join("bpf"))
        .arg("-c")
        .arg(manifest.join("bpf/datapath.c"))
        .arg("-o")
        .arg(&object)
        .output()
        .map_err(|e| format!("running {clang}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "clang failed to compile bpf/datapath.c ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// Debian keeps `asm/` under a per-architecture directory that clang does not
/// search when it targets bpf.
fn multiarch_include(include: &Path) -> PathBuf {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        other => return include.join(format!("{other}-linux-gnu")),
    };
    include.join(triple)
}
