//! Package managers: one collector each, all producing `package` CIs keyed
//! `<manager>:<name>:<arch>`. Each reads the manager's own database files directly; only
//! rpm is asked through its command (with a timeout), since its database format varies.

pub mod apk;
pub mod dpkg;
pub mod flatpak;
pub mod pacman;
pub mod rpm;
pub mod snap;
