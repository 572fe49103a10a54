//! The `tollgate` sidecar binary.
fn main() -> std::process::ExitCode {
    tollgate::sidecar::main()
}
