//! `meshgate-cni`: the CNI plugin (CNI spec 1.0.0) the container runtime
//! runs for each pod. Everything is in [`cni`].

mod cni;

fn main() -> std::process::ExitCode {
    cni::main()
}
