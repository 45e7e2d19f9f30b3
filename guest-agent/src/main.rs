//! The `cordon-agent` binary: PID 1 in the microVM (see the library).

fn main() {
    cordon_agent::main()
}
