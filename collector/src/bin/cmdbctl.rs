//! cmdbctl: the collector's API from the shell (in progress).
#![forbid(unsafe_code)]

fn main() {
    eprintln!("cmdbctl: not yet available");
    std::process::exit(2);
}
