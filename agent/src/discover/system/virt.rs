//! Is this host a virtual machine, and is the agent's view a container? Decided from files
//! only (no CPUID, no DMI table walk, no commands), so that a fixture tree or a host mounted
//! at `--host-root` gives the same answer the live host would.
//!
//! Virtualization, first match wins: DMI vendor/product strings (the most specific name),
//! `/sys/hypervisor/type`, the clocksources the kernel offers (`kvm-clock`, Hyper-V, Xen),
//! then the `hypervisor` CPU flag ("unknown": a VM, but of no known kind). DMI "QEMU" is
//! reported as `kvm` when KVM's paravirtual clock is present (a KVM-accelerated QEMU guest,
//! what `systemd-detect-virt` calls kvm) and as `qemu` otherwise (emulation).
//!
//! Container: `container=` in pid 1's environment or `/run/systemd/container`, then
//! `/run/.containerenv` (podman), `/.dockerenv` (docker), pid 1's cgroup paths, and a WSL
//! kernel; Kubernetes wins over the runtime underneath it.

/// The DMI strings virtualization is recognised by (trimmed, unfiltered: a placeholder
/// never matches a hypervisor name anyway).
#[derive(Clone, Debug, Default)]
pub struct DmiStrings<'a> {
    pub sys_vendor: Option<&'a str>,
    pub product_name: Option<&'a str>,
    pub product_version: Option<&'a str>,
    pub board_vendor: Option<&'a str>,
    pub bios_vendor: Option<&'a str>,
    pub bios_version: Option<&'a str>,
}

/// Vendor/product prefixes and the hypervisor they name (after systemd-detect-virt's
/// table, with VirtualBox called by its product name).
const DMI_VENDORS: &[(&str, &str)] = &[
    ("KVM", "kvm"),
    ("OpenStack", "kvm"),
    ("KubeVirt", "kvm"),
    ("oVirt", "kvm"),
    ("RHEV Hypervisor", "kvm"),
    ("Nutanix AHV", "kvm"),
    ("Hetzner vServer", "kvm"),
    ("DigitalOcean", "kvm"),
    ("Scaleway", "kvm"),
    ("Alibaba Cloud ECS", "alibaba"),
    ("Amazon EC2", "amazon"),
    ("Google Compute Engine", "google"),
    ("Google", "google"),
    ("QEMU", "qemu"),
    ("VMware", "vmware"),
    ("VMW", "vmware"),
    ("innotek GmbH", "virtualbox"),
    ("VirtualBox", "virtualbox"),
    ("Xen", "xen"),
    ("HVM domU", "xen"),
    ("Bochs", "bochs"),
    ("Parallels", "parallels"),
    ("BHYVE", "bhyve"),
    ("Hyper-V", "microsoft"),
    ("Apple Virtualization", "apple"),
];

/// What virtualization detection looks at.
#[derive(Clone, Debug, Default)]
pub struct VirtEvidence<'a> {
    pub dmi: DmiStrings<'a>,
    /// `/sys/hypervisor/type` ("xen").
    pub hypervisor_type: Option<&'a str>,
    /// `/proc/xen/capabilities`: "control_d" marks a Xen dom0, which is the host.
    pub xen_capabilities: Option<&'a str>,
    /// `/sys/devices/system/clocksource/clocksource0/available_clocksource`.
    pub clocksources: Option<&'a str>,
    /// Whether the first CPU in /proc/cpuinfo has the `hypervisor` flag (`None`: not read).
    pub hypervisor_flag: Option<bool>,
}

/// The virtualization name DMI alone gives, if any.
pub fn from_dmi(dmi: &DmiStrings<'_>) -> Option<&'static str> {
    // EC2 bare-metal instances carry Amazon's DMI but are not virtualized.
    if dmi.sys_vendor == Some("Amazon EC2")
        && dmi.product_name.is_some_and(|p| p.ends_with(".metal"))
    {
        return Some("none");
    }
    if dmi
        .sys_vendor
        .is_some_and(|v| v.starts_with("Microsoft Corporation"))
        && dmi.product_name == Some("Virtual Machine")
    {
        return Some("microsoft");
    }
    let candidates = [
        dmi.product_name,
        dmi.sys_vendor,
        dmi.board_vendor,
        dmi.bios_vendor,
        dmi.product_version,
        dmi.bios_version,
    ];
    candidates.into_iter().flatten().find_map(|s| {
        DMI_VENDORS
            .iter()
            .find(|(prefix, _)| s.starts_with(prefix))
            .map(|(_, name)| *name)
    })
}

/// The virtualization the evidence points to ("none" when nothing does).
pub fn virtualization(e: &VirtEvidence<'_>) -> &'static str {
    let clock = |name: &str| {
        e.clocksources
            .is_some_and(|c| c.split_whitespace().any(|s| s == name))
    };
    if let Some(name) = from_dmi(&e.dmi) {
        return if name == "qemu" && clock("kvm-clock") {
            "kvm"
        } else {
            name
        };
    }
    if e.hypervisor_type.map(str::trim) == Some("xen") {
        let dom0 = e
            .xen_capabilities
            .is_some_and(|c| c.split(',').any(|f| f.trim() == "control_d"));
        return if dom0 { "none" } else { "xen" };
    }
    if clock("kvm-clock") {
        return "kvm";
    }
    if clock("hyperv_clocksource_tsc_page") || clock("hyperv_clocksource_msr") {
        return "microsoft";
    }
    if clock("xen") {
        return "xen";
    }
    if e.hypervisor_flag == Some(true) {
        return "unknown";
    }
    "none"
}

/// Whether the flags line of the first processor in a cpuinfo prefix has `hypervisor`.
pub fn cpuinfo_has_hypervisor_flag(cpuinfo_head: &str) -> bool {
    cpuinfo_head
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .any(|(_, v)| v.split_whitespace().any(|f| f == "hypervisor"))
}

/// What container detection looks at.
#[derive(Clone, Debug, Default)]
pub struct ContainerEvidence<'a> {
    /// Pid 1's environment, NUL-separated (`/proc/1/environ`).
    pub pid1_environ: Option<&'a [u8]>,
    /// `/run/systemd/container`.
    pub systemd_container: Option<&'a str>,
    pub containerenv: bool,
    pub dockerenv: bool,
    /// `/proc/1/cgroup`.
    pub pid1_cgroup: Option<&'a str>,
    /// `/proc/sys/kernel/osrelease` (WSL kernels say "microsoft").
    pub kernel_release: Option<&'a str>,
}

/// The container the evidence points to ("none" when nothing does).
pub fn container(e: &ContainerEvidence<'_>) -> String {
    let env = e.pid1_environ.map(parse_environ).unwrap_or_default();
    let env_var = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let cgroup = e.pid1_cgroup.map(cgroup_runtime).unwrap_or_default();
    if cgroup == Some("kubernetes") || env_var("KUBERNETES_SERVICE_HOST").is_some() {
        return "kubernetes".to_owned();
    }
    let named = env_var("container")
        .or(e.systemd_container)
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if let Some(name) = named {
        // "oci" is what podman and some runtimes put there for a generic OCI container.
        return match name {
            "oci" if e.containerenv => "podman".to_owned(),
            other => other.to_ascii_lowercase(),
        };
    }
    if e.containerenv {
        return "podman".to_owned();
    }
    if e.dockerenv {
        return "docker".to_owned();
    }
    if let Some(runtime) = cgroup {
        return runtime.to_owned();
    }
    let release = e.kernel_release.unwrap_or_default().to_ascii_lowercase();
    if release.contains("microsoft") || release.contains("wsl") {
        return "wsl".to_owned();
    }
    "none".to_owned()
}

/// Splits a NUL-separated environment block into (name, value) pairs; entries without `=`
/// are skipped.
pub fn parse_environ(block: &[u8]) -> Vec<(&str, String)> {
    block
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (k, v) = text.split_once('=')?;
            Some((k, v.to_owned()))
        })
        .collect()
}

/// The container runtime pid 1's cgroup paths reveal, if any (cgroup v1 and v2 lines
/// "hierarchy:controllers:path"; malformed lines are ignored).
pub fn cgroup_runtime(text: &str) -> Option<&'static str> {
    let paths = text
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .map(str::trim);
    let mut found = None;
    for p in paths {
        if p.contains("kubepods") {
            return Some("kubernetes");
        }
        if p.contains("libpod") {
            found = Some("podman");
        } else if p.starts_with("/docker/") || p.contains("/docker-") || p.contains("docker.slice")
        {
            found = found.or(Some("docker"));
        } else if p.starts_with("/lxc/") || p.contains("lxc.payload") {
            found = found.or(Some("lxc"));
        } else if p.contains("/containerd/") || p.contains("cri-containerd") {
            found = found.or(Some("containerd"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dmi<'a>(vendor: &'a str, product: &'a str) -> DmiStrings<'a> {
        DmiStrings {
            sys_vendor: Some(vendor),
            product_name: Some(product),
            ..DmiStrings::default()
        }
    }

    #[test]
    fn dmi_names_hypervisors() {
        for (vendor, product, want) in [
            ("QEMU", "Standard PC (Q35 + ICH9, 2009)", Some("qemu")),
            ("Red Hat", "KVM", Some("kvm")),
            ("VMware, Inc.", "VMware Virtual Platform", Some("vmware")),
            ("innotek GmbH", "VirtualBox", Some("virtualbox")),
            (
                "Microsoft Corporation",
                "Virtual Machine",
                Some("microsoft"),
            ),
            ("Microsoft Corporation", "Surface Laptop 5", None),
            ("Amazon EC2", "m5.large", Some("amazon")),
            ("Amazon EC2", "i3.metal", Some("none")),
            ("Google", "Google Compute Engine", Some("google")),
            ("Xen", "HVM domU", Some("xen")),
            ("Dell Inc.", "PowerEdge R740", None),
            ("LENOVO", "20XWCTO1WW", None),
        ] {
            assert_eq!(from_dmi(&dmi(vendor, product)), want, "{vendor} {product}");
        }
    }

    #[test]
    fn evidence_is_ranked() {
        let qemu = dmi("QEMU", "Standard PC (i440FX + PIIX, 1996)");
        let with = |dmi: DmiStrings<'static>, clocks: Option<&'static str>, flag| VirtEvidence {
            dmi,
            clocksources: clocks,
            hypervisor_flag: flag,
            ..VirtEvidence::default()
        };
        assert_eq!(
            virtualization(&with(qemu.clone(), Some("kvm-clock tsc acpi_pm "), None)),
            "kvm"
        );
        assert_eq!(
            virtualization(&with(qemu, Some("tsc acpi_pm"), Some(true))),
            "qemu"
        );
        assert_eq!(
            virtualization(&with(
                DmiStrings::default(),
                Some("tsc kvm-clock"),
                Some(true)
            )),
            "kvm"
        );
        assert_eq!(
            virtualization(&with(DmiStrings::default(), None, Some(true))),
            "unknown"
        );
        assert_eq!(
            virtualization(&with(DmiStrings::default(), Some("tsc hpet"), Some(false))),
            "none"
        );
        let xen = VirtEvidence {
            hypervisor_type: Some("xen\n"),
            ..VirtEvidence::default()
        };
        assert_eq!(virtualization(&xen), "xen");
        let dom0 = VirtEvidence {
            hypervisor_type: Some("xen"),
            xen_capabilities: Some("control_d"),
            ..VirtEvidence::default()
        };
        assert_eq!(virtualization(&dom0), "none");
    }

    #[test]
    fn hypervisor_flag_is_read_from_the_first_processor() {
        let info = "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n\nprocessor\t: 1\n";
        assert!(cpuinfo_has_hypervisor_flag(info));
        assert!(!cpuinfo_has_hypervisor_flag(
            "processor\t: 0\nflags\t\t: fpu vmx\n"
        ));
        assert!(!cpuinfo_has_hypervisor_flag(
            "processor : 0\n\nflags : hypervisor\n"
        ));
    }

    #[test]
    fn containers_are_recognised() {
        let docker_v1 = "12:pids:/docker/3f9c2b7e1a4d\n0::/docker/3f9c2b7e1a4d\n";
        let cases: Vec<(ContainerEvidence<'_>, &str)> = vec![
            (ContainerEvidence::default(), "none"),
            (
                ContainerEvidence {
                    dockerenv: true,
                    ..ContainerEvidence::default()
                },
                "docker",
            ),
            (
                ContainerEvidence {
                    pid1_cgroup: Some(docker_v1),
                    ..ContainerEvidence::default()
                },
                "docker",
            ),
            (
                ContainerEvidence {
                    containerenv: true,
                    pid1_environ: Some(b"PATH=/bin\0container=oci\0"),
                    ..ContainerEvidence::default()
                },
                "podman",
            ),
            (
                ContainerEvidence {
                    systemd_container: Some("systemd-nspawn\n"),
                    ..ContainerEvidence::default()
                },
                "systemd-nspawn",
            ),
            (
                ContainerEvidence {
                    pid1_environ: Some(b"container=lxc\0"),
                    dockerenv: true,
                    ..ContainerEvidence::default()
                },
                "lxc",
            ),
            (
                ContainerEvidence {
                    dockerenv: true,
                    pid1_cgroup: Some("0::/kubepods/besteffort/pod1/abc\n"),
                    ..ContainerEvidence::default()
                },
                "kubernetes",
            ),
            (
                ContainerEvidence {
                    pid1_environ: Some(b"KUBERNETES_SERVICE_HOST=10.0.0.1\0"),
                    ..ContainerEvidence::default()
                },
                "kubernetes",
            ),
            (
                ContainerEvidence {
                    kernel_release: Some("5.15.146.1-microsoft-standard-WSL2"),
                    ..ContainerEvidence::default()
                },
                "wsl",
            ),
            (
                ContainerEvidence {
                    pid1_cgroup: Some("0::/init.scope\n"),
                    kernel_release: Some("5.14.0-427.22.1.el9_4.x86_64"),
                    ..ContainerEvidence::default()
                },
                "none",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(container(&e), want, "{e:?}");
        }
    }

    proptest! {
        #[test]
        fn detection_never_panics(
            text in "\\PC{0,300}",
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = cgroup_runtime(&text);
            let _ = parse_environ(&bytes);
            let _ = cpuinfo_has_hypervisor_flag(&text);
            let e = ContainerEvidence {
                pid1_environ: Some(&bytes),
                systemd_container: Some(&text),
                pid1_cgroup: Some(&text),
                kernel_release: Some(&text),
                ..ContainerEvidence::default()
            };
            prop_assert!(!container(&e).is_empty());
            let v = VirtEvidence {
                dmi: dmi(&text, &text),
                hypervisor_type: Some(&text),
                xen_capabilities: Some(&text),
                clocksources: Some(&text),
                hypervisor_flag: None,
            };
            prop_assert!(!virtualization(&v).is_empty());
        }
    }
}
